"""Snippet chunking: exact concatenation, the budget, and where the cuts fall."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ra3_megatron.data.chunking import boundary_levels, chunk_snippets, offset_cost, plan_chunks

pytestmark = pytest.mark.unit

MODULE = '''"""Doc."""
import os

# helper comment
# second line
@decorator
def first(a):
    return a


class Box:
    size = 1

    def grow(self):
        self.size += 1
        return self.size

    def shrink(self):
        self.size -= 1


x = [
    1,
    2,
]
'''


def chars(a: int, b: int) -> int:
    return b - a


def test_fits_in_one_chunk_without_parsing():
    plan = plan_chunks(MODULE, chars, len(MODULE))
    assert plan.chunks == [MODULE] and plan.parsed is None


def test_cuts_at_top_level_definitions_with_their_comments_and_decorators():
    levels, parsed = boundary_levels(MODULE)
    assert parsed is True
    # comments directly above and decorators stay with `def first`
    assert levels[0] == [MODULE.index(s) for s in ("import os", "# helper comment", "class Box", "x = [")]
    plan = plan_chunks(MODULE, chars, 75)
    assert "".join(plan.chunks) == MODULE and all(len(c) <= 75 for c in plan.chunks)
    assert plan.chunks[:2] == [
        '"""Doc."""\nimport os\n\n',
        MODULE[MODULE.index("# helper") : MODULE.index("class Box")],
    ]
    assert plan.chunks[-1] == MODULE[MODULE.index("x = [") :]


def test_an_oversize_class_is_cut_between_its_methods():
    plan = plan_chunks(MODULE, chars, 60)
    assert "".join(plan.chunks) == MODULE and all(len(c) <= 60 for c in plan.chunks)
    assert any(c.startswith("    def shrink(self):") for c in plan.chunks)


def test_blank_line_fallback_on_syntax_error_then_lines_then_inside_a_line():
    text = "def f(:\n    a = 1\n\n    b = 2\n\nnot python at all\n" + "z" * 50 + "\n"
    levels, parsed = boundary_levels(text)
    assert parsed is False
    assert levels[0] == [text.index("not python")]  # blank line before an unindented line
    plan = plan_chunks(text, chars, 20)
    assert "".join(plan.chunks) == text and all(0 < len(c) <= 20 for c in plan.chunks)
    assert plan.hard_splits == 1  # the 51-character line
    assert "    b = 2\n\n" in plan.chunks


def test_count_tokens_and_tokenizer_interfaces(tiny_tokenizer):
    def words(s: str) -> int:
        return len(s.split())

    chunks = chunk_snippets(MODULE, count_tokens=words, max_tokens=12)
    assert "".join(chunks) == MODULE and all(words(c) <= 12 for c in chunks)
    chunks = chunk_snippets(MODULE, tokenizer=tiny_tokenizer, max_tokens=30)
    assert "".join(chunks) == MODULE and len(chunks) > 1
    assert all(len(tiny_tokenizer(c, add_special_tokens=False)["input_ids"]) <= 30 for c in chunks)
    with pytest.raises(ValueError):
        chunk_snippets(MODULE, max_tokens=10)


def test_offset_cost_counts_token_starts():
    cost = offset_cost([0, 3, 3, 7, 10])
    assert cost(0, 11) == 5 and cost(3, 7) == 2 and cost(4, 7) == 0


code_lines = st.lists(
    st.one_of(
        st.just(""),
        st.just("    "),
        st.sampled_from(
            ["def f():", "    return 1", "class A:", "x = 1", "# c", "@d", "    pass", "if x:", "'''", "\\"]
        ),
        st.text(alphabet="ab =(:)\t\r#'\"é", max_size=30),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(code_lines, st.integers(1, 40), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_chunks_always_concatenate_exactly_and_respect_the_budget(lines, budget, newline, trailing):
    text = newline.join(lines) + (newline if trailing else "")
    plan = plan_chunks(text, chars, budget)
    assert "".join(plan.chunks) == text
    assert all(0 < len(c) <= budget for c in plan.chunks)


def test_stdlib_sample_with_the_tiny_tokenizer(tiny_tokenizer_dir):
    from ra3_megatron.data.tokenizer import load_tokenizer
    from ra3_megatron.models.tiny import stdlib_files

    tok = load_tokenizer(str(tiny_tokenizer_dir))
    files = random.Random(0).sample(stdlib_files(), 12)
    split = 0
    for path in files:
        text = path.read_bytes().decode("utf-8")
        chunks = chunk_snippets(text, tokenizer=tok.backend, max_tokens=256)
        assert "".join(chunks) == text
        assert all(len(tok.encode(c)) <= 256 for c in chunks)
        split += len(chunks) > 1
    assert split >= 6  # most stdlib files are over 256 tokens: the sample really exercised the cuts
