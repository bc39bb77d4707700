"""E-step text pieces: they tile the snippet, thoughts inserted at the cuts give render(), and the
decision token is the one that starts with '#' or with the code."""

from __future__ import annotations

import pytest

from ra3_megatron.core.latent import InfusedSnippet, Thought, safe_candidate_lines
from ra3_megatron.estep.pieces import Codec, after_thought, cut_pieces, think_marker, thought_middle

pytestmark = pytest.mark.unit

SNIPPETS = [
    "def f(x):\n\n    y = 1\n    return y\n",
    "a = 1\r\nif a:\r\n    b = 2\r\n\r\n    c = 3\r\n",
    "\n\nx = 1\ny = 2",  # leading blank lines, no final newline
    "x = 1\n   \n\t\ny = 2\n\n\n",  # whitespace-only lines, trailing blank lines
    "only_one_line = 1\n",
    "",
]


@pytest.mark.parametrize("text", SNIPPETS)
def test_pieces_tile_the_text(text):
    pieces = cut_pieces(text)
    assert "".join(p.text for p in pieces) == text
    for before, p in zip(pieces, pieces[1:]):
        # each cut follows a non-space character and opens the whitespace run before the next line
        assert not before.text[-1:].isspace() and p.text.startswith(p.lead) and p.lead[:1] in ("\n", "\r")
        assert not p.lead.strip() and p.lead.endswith(p.indent)
    nonblank_after_first = [p.line for p in pieces[1:]]
    lines = text.split("\n")
    assert all(lines[i].strip() for i in nonblank_after_first)


@pytest.mark.parametrize("text", [t for t in SNIPPETS if t.strip()])
def test_middles_at_the_cuts_render_the_infused_snippet(text):
    pieces = cut_pieces(text)
    chosen = {p.line: f"thought {i}" for i, p in enumerate(pieces[1:])}
    joined = pieces[0].text + "".join(thought_middle(chosen[p.line], p) + after_thought(p) for p in pieces[1:])
    infused = InfusedSnippet(
        id="s", text=text, thoughts=tuple(Thought(line=k, text=v) for k, v in chosen.items())
    )
    assert joined == infused.render()


def test_prefix_before_a_cut_is_render_upto_without_its_newline():
    text = "def f(x):\n\n    y = 1\n    return y\n"
    pieces = cut_pieces(text)
    infused = InfusedSnippet(id="s", text=text, thoughts=(Thought(line=2, text="set y"),))
    prefix = pieces[0].text + thought_middle("set y", pieces[1]) + after_thought(pieces[1])
    assert infused.render_upto(pieces[2].line) == prefix + "\n"


def test_decision_token_is_hash_or_first_code_token(tiny_tokenizer):
    codec = Codec(tiny_tokenizer)
    piece = cut_pieces("x = 1\n    if y:\n        pass\n")[1]
    marker = codec.encode(think_marker(piece))
    d = codec.decision_index(marker)
    assert tiny_tokenizer.decode(list(marker[d : d + 1])).strip() == "#"
    act = codec.encode(piece.text)
    d_act = codec.decision_index(act)
    assert tiny_tokenizer.decode(list(act[d_act : d_act + 1])).strip() == "if"
    assert act[:d_act] == marker[:d]  # the same newline + indent context before the decision
    middle = codec.encode(thought_middle("check y", piece))
    assert middle[: d + 1] == marker


def test_candidates_are_safe_lines_only():
    text = 's = """\nnot code\n"""\nx = 1\n'
    pieces = cut_pieces(text)
    safe = set(safe_candidate_lines(text))
    assert 1 not in safe and 2 not in safe  # inside the string literal
    assert {p.line for p in pieces[1:]} >= safe


def _stdlib_texts(n: int = 40, chars: int = 6000) -> list[str]:
    from ra3_megatron.models.tiny import stdlib_files

    return [p.read_text(encoding="utf-8")[:chars] for p in stdlib_files(n)]


def test_piece_ids_are_the_whole_texts_tokenization_over_the_stdlib(tiny_tokenizer):
    """What the E-step scores and trains on is what the M-step trains on and inference sees: the
    tokenizer's ids for the whole (rendered) text, thoughts or not, blank lines included."""
    codec = Codec(tiny_tokenizer)
    whole = tiny_tokenizer.encode
    for k, text in enumerate(_stdlib_texts()):
        pieces = cut_pieces(text)
        assert tuple(i for p in pieces for i in codec.encode(p.text)) == tuple(whole(text, add_special_tokens=False))
        # a thought at every third candidate position: head, middles and continuations
        chosen = {p.line: f"step {n} of file {k}" for n, p in enumerate(pieces[1:]) if n % 3 == 0}
        infused = InfusedSnippet(id="s", text=text, thoughts=tuple(Thought(line=a, text=b) for a, b in chosen.items()))
        ids = list(codec.encode(pieces[0].text))
        for p in pieces[1:]:
            if p.line in chosen:
                ids += [*codec.encode(thought_middle(chosen[p.line], p)), *codec.encode(after_thought(p))]
            else:
                ids += codec.encode(p.text)
        assert tuple(ids) == tuple(whole(infused.render(), add_special_tokens=False)), k
