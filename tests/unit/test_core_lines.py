"""Line segmentation into actions: blank lines, indentation, CRLF, a last line without newline."""

from __future__ import annotations

import pytest

from ra3_megatron.core.lines import (
    candidate_lines,
    dominant_ending,
    is_blank,
    line_ending,
    line_indent,
    segment_actions,
    split_lines,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\n", ["a\n"]),
        ("a\nb", ["a\n", "b"]),
        ("a\r\nb\r\n", ["a\r\n", "b\r\n"]),
        ("\n\n", ["\n", "\n"]),
        ("a\rb\n", ["a\rb\n"]),  # a lone CR is line content
        ("a\x0cb\n\u2028c", ["a\x0cb\n", "\u2028c"]),  # unlike str.splitlines
    ],
)
def test_split_lines_keeps_endings(text, lines):
    assert split_lines(text) == lines
    assert "".join(split_lines(text)) == text


def test_blank_indent_and_ending_helpers():
    assert is_blank("   \t\r\n") and is_blank("\x0c\n") and is_blank("")
    assert not is_blank("  # c\n")
    assert line_indent("\t  x = 1\n") == "\t  "
    assert line_indent("\x0c    def f():\n") == "    "
    assert line_indent("x\n") == ""
    assert [line_ending(s) for s in ("a\r\n", "a\n", "a")] == ["\r\n", "\n", ""]
    assert dominant_ending(split_lines("a\r\nb\r\nc\n")) == "\r\n"
    assert dominant_ending(split_lines("a\r\nb\nc\n")) == "\n"
    assert dominant_ending(split_lines("a")) == "\n"


def test_blank_lines_belong_to_the_next_line():
    text = "import os\n\n\ndef f():\n    \n\treturn 1\n"
    actions = segment_actions(text)
    assert [a.line for a in actions] == [0, 3, 5]
    assert [a.text for a in actions] == ["import os\n", "\n\ndef f():\n", "    \n\treturn 1\n"]
    assert [a.indent for a in actions] == ["", "", "\t"]
    assert [a.index for a in actions] == [0, 1, 2]
    for a in actions:
        assert text[a.start : a.end] == a.text
        assert split_lines(text)[a.line] == text[a.line_start : a.end].splitlines(keepends=True)[0]
    assert actions[1].line_start == text.index("def")


def test_actions_tile_the_text_with_trailing_blank_lines_on_the_last_action():
    text = "\n  \nx = 1\r\ny = 2\r\n\r\n  \r\n"
    actions = segment_actions(text)
    assert "".join(a.text for a in actions) == text
    assert actions[0].text == "\n  \nx = 1\r\n" and actions[0].line == 2
    assert actions[-1].text == "y = 2\r\n\r\n  \r\n" and actions[-1].end == len(text)
    assert actions[-1].line_start == text.index("y")


def test_last_line_without_newline_and_degenerate_texts():
    actions = segment_actions("a = 1\n    b")
    assert [a.text for a in actions] == ["a = 1\n", "    b"]
    assert actions[1].indent == "    "
    assert segment_actions("") == []
    assert segment_actions("\n \t\n\n") == []
    assert candidate_lines("") == [] and candidate_lines("\n\n") == []


def test_candidate_lines_skip_the_first_non_blank_line():
    assert candidate_lines("\n\nimport os\n\nx = 1\n  y\n") == [4, 5]
    assert candidate_lines("only\n") == []
