"""Standard generation prompts and stop sequences for the code benchmarks.

- HumanEval (and HumanEval+): the prompt is the function header with its docstring; the model
  writes the body. Stops: a new top-level `def`/`class`, `if __name__`, `print(`, `assert`.
  There is deliberately no stop on "\\n#": an RA3 model writes its thoughts as `# ...` comment
  lines, and those belong to the completion.
- MBPP, 3-shot (default; Austin et al. 2021): tasks 2, 3 and 4 as worked examples in the format
  "You are an expert Python programmer, and here is your task: {text} Your code should pass
  these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]"; the completion is the code up to [DONE].
- MBPP, EvalPlus style (`mbpp_prompt="evalplus"`, and MBPP+ files): a docstring holding the task
  text and its first test; the model writes the whole function after it.
"""

from __future__ import annotations

HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")
MBPP_3SHOT_STOPS = ("[DONE]",)
EVALPLUS_MBPP_STOPS = ("\nif __name__", "\nprint(", "\nassert ", '\n"""')
MBPP_SHOT_IDS = (2, 3, 4)


def mbpp_block(text: str, tests: list[str], code: str | None = None) -> str:
    head = (
        f"You are an expert Python programmer, and here is your task: {text} "
        f"Your code should pass these tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n"
    )
    return head if code is None else head + code.strip() + "\n[DONE]\n"


def mbpp_3shot_prompt(shots: list[tuple[str, list[str], str]], text: str, tests: list[str]) -> str:
    """Three solved examples (text, tests, code), then the task, ending at "[BEGIN]\\n"."""
    return "".join(mbpp_block(t, ts, c) for t, ts, c in shots) + mbpp_block(text, tests)


def evalplus_mbpp_prompt(text: str, first_test: str) -> str:
    return f'"""\n{text}\n{first_test}\n"""\n'


def truncate_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """The text before the earliest stop sequence (engines stop there; this makes it certain)."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop)
        if 0 <= i < cut:
            cut = i
    return text[:cut]
