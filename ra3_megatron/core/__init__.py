"""The pure RA3 core: line actions, the latent format, token classes, reward math, pass@k.

Depends on the standard library and numpy only (a test enforces that importing it pulls in no
torch, Megatron, vLLM or Transformer Engine), so every other layer can build on it:
- `lines`: physical lines and actions (a non-blank line with the blank lines before it);
- `latent`, `safe_lines`: thoughts as comment lines, infused snippets, where thoughts are safe;
- `token_classes`: CODE / LATENT per token through tokenizer offsets (the function of the same
  name is not re-exported here, so `ra3_megatron.core.token_classes` stays the module);
- `rewards`: gain, reward with penalty c, option choice, RLOO / GRPO advantages;
- `passk`: the unbiased pass@k estimator.
(`losses`, the tensor losses, is imported on its own: it needs torch.)
"""

from ra3_megatron.core.latent import (
    THOUGHT_MARKER,
    InfusedSnippet,
    Thought,
    render_thought,
    safe_candidate_lines,
    strip_spans,
    validate_thought_text,
)
from ra3_megatron.core.lines import (
    Action,
    candidate_lines,
    dominant_ending,
    is_blank,
    line_ending,
    line_indent,
    segment_actions,
    split_lines,
)
from ra3_megatron.core.passk import estimate_pass_at_k, pass_at_k
from ra3_megatron.core.rewards import choose_option, gain, group_advantages, option_rewards, thought_reward
from ra3_megatron.core.safe_lines import safe_thought_lines
from ra3_megatron.core.token_classes import CODE, LATENT, encode_with_classes

__all__ = [
    "CODE",
    "LATENT",
    "THOUGHT_MARKER",
    "Action",
    "InfusedSnippet",
    "Thought",
    "candidate_lines",
    "choose_option",
    "dominant_ending",
    "encode_with_classes",
    "estimate_pass_at_k",
    "gain",
    "group_advantages",
    "is_blank",
    "line_ending",
    "line_indent",
    "option_rewards",
    "pass_at_k",
    "render_thought",
    "safe_candidate_lines",
    "safe_thought_lines",
    "segment_actions",
    "split_lines",
    "strip_spans",
    "thought_reward",
    "validate_thought_text",
]
