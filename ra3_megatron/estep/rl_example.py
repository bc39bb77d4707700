"""One RL training row's content: a token sequence, where its loss starts, its advantage.

Its own module so that the RL update (`estep.rl`) and the tree packing of rows
(`estep.tree_rows`) both import it without importing each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RLExample:
    tokens: tuple[int, ...]
    loss_from: int  # index in tokens of the first token the loss covers (it covers them to the end)
    advantage: float
    # Loss spans (from, to, advantage) of shorter examples whose tokens begin this one's and
    # that were folded into it (`fold_prefixes`): tokens[from:to] carry that advantage.
    folded: tuple[tuple[int, int, float], ...] = ()

    def spans(self) -> list[tuple[int, int, float]]:
        return [*self.folded, (self.loss_from, len(self.tokens), self.advantage)]
