"""The latent format: rendering, spans, strip, records, validation and safe thought lines."""

from __future__ import annotations

import ast
import json

import pytest

from ra3_megatron.core.latent import (
    InfusedSnippet,
    Thought,
    render_thought,
    safe_candidate_lines,
    safe_thought_lines,
    strip_spans,
    validate_thought_text,
)

pytestmark = pytest.mark.unit

CODE = "import os\n\n\ndef f(x):\n    if x:\n\treturn 1\n    return 2\n"


def test_render_uses_the_next_lines_indentation_after_blank_lines():
    s = InfusedSnippet("a", CODE, (Thought(3, "define f"), Thought(5, "early exit"), Thought(4, "check x")))
    assert [t.line for t in s.thoughts] == [3, 4, 5]  # sorted on construction
    assert s.render() == (
        "import os\n\n\n# define f\ndef f(x):\n    # check x\n    if x:\n\t# early exit\n\treturn 1\n    return 2\n"
    )
    rendered, spans = s.render_with_spans()
    assert [rendered[a:b] for a, b in spans] == ["# define f\n", "    # check x\n", "\t# early exit\n"]
    assert s.thought_spans() == spans
    assert strip_spans(rendered, spans) == CODE


def test_crlf_last_line_and_first_line():
    text = "x = 1\r\n\r\n  y = 2"
    s = InfusedSnippet("c", text, (Thought(0, "first"), Thought(2, "last")))
    # the last line has no ending: the snippet's dominant one (CRLF) is used
    assert s.render() == "# first\r\nx = 1\r\n\r\n  # last\r\n  y = 2"
    assert strip_spans(s.render(), s.thought_spans()) == text
    lf = InfusedSnippet("d", "a\nb", (Thought(1, "t"),))
    assert lf.render() == "a\n# t\nb"
    assert InfusedSnippet("e", "", ()).render() == ""


def test_render_upto_is_the_prefix_before_the_insertion_point():
    s = InfusedSnippet("a", CODE, (Thought(3, "define f"), Thought(5, "early exit")))
    assert s.render_upto(3) == "import os\n\n\n"
    assert s.render_upto(5) == "import os\n\n\n# define f\ndef f(x):\n    if x:\n"
    assert s.render().startswith(s.render_upto(5) + "\t# early exit\n")
    assert s.render_upto(99) == s.render()
    assert s.with_thought(Thought(6, "else")).render_upto(6).endswith("\treturn 1\n")


def test_records_round_trip_through_json():
    s = InfusedSnippet("id-1", CODE, (Thought(4, "check x", 0.25), Thought(3, "define f")))
    record = json.loads(json.dumps(s.to_record()))
    assert record["thoughts"] == [
        {"line": 3, "text": "define f", "gain": None},
        {"line": 4, "text": "check x", "gain": 0.25},
    ]
    assert InfusedSnippet.from_record(record) == s
    assert InfusedSnippet.from_record(
        {"id": "x", "text": "a\n", "thoughts": [{"line": 0, "text": "t"}]}
    ).thoughts[0] == Thought(0, "t", None)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "a\n", "thoughts": []}, "missing 'id'"),
        ({"id": "x", "text": "a\n", "thoughts": {}}, "must be a list"),
        (
            {"id": "x", "text": "a\n\nb\n", "thoughts": [{"line": 1, "text": "t"}]},
            "line 1 is not a non-blank",
        ),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": 5, "text": "t"}]}, "line 5 is not a non-blank"),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": -1, "text": "t"}]}, "not a non-blank"),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": "0", "text": "t"}]}, "must be an integer"),
        (
            {"id": "x", "text": "a\nb\n", "thoughts": [{"line": 1, "text": "t"}, {"line": 1, "text": "u"}]},
            "more than one",
        ),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": 0, "text": "two\nlines"}]}, "single line"),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": 0, "text": "  "}]}, "non-empty"),
        ({"id": "x", "text": "a\n", "thoughts": [{"line": 0, "text": "t", "gain": float("nan")}]}, "finite"),
        ({"id": "x", "text": "a\n", "thoughts": [{"text": "t"}]}, "needs 'line'"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_records_raise_clear_errors(record, message):
    with pytest.raises(ValueError, match=message):
        InfusedSnippet.from_record(record)


def test_thoughts_are_normalized_and_validated_in_any_order():
    np = pytest.importorskip("numpy")
    s = InfusedSnippet("n", CODE, [Thought(np.int64(4), "b", np.float32(0.5)), Thought(3, "a", 1)])
    assert s.thoughts == (Thought(3, "a", 1.0), Thought(4, "b", 0.5))
    assert type(s.thoughts[1].line) is int and type(s.thoughts[1].gain) is float
    json.dumps(s.to_record())
    with pytest.raises(ValueError, match="must be an integer"):
        InfusedSnippet("n", CODE, (Thought(3, "a"), Thought("4", "b")))
    with pytest.raises(ValueError, match="not a Thought"):
        InfusedSnippet("n", CODE, ((3, "a"),))
    with pytest.raises(ValueError, match="must be strings"):
        InfusedSnippet(7, CODE)


def test_validate_thought_text():
    assert validate_thought_text("  compute the sum \t") == "compute the sum"
    assert validate_thought_text("x" * 10, max_chars=10) == "x" * 10
    for bad in ("", "   ", "a\nb", "a\rb", "a\x0cb", "a\u2028b", "a\x00b", "a\ud800b", None, 3):
        assert validate_thought_text(bad) is None, repr(bad)
    assert validate_thought_text("x" * 11, max_chars=10) is None
    assert render_thought("t", "  ", "\r\n") == "  # t\r\n"


def test_strip_spans_rejects_bad_spans():
    assert strip_spans("abcdef", [(1, 2), (4, 6)]) == "acd"
    with pytest.raises(ValueError):
        strip_spans("abc", [(2, 3), (0, 1)])
    with pytest.raises(ValueError):
        strip_spans("abc", [(2, 5)])


UNSAFE_SRC = (
    "x = 1\n"  # 0
    's = """\n'  # 1
    "inside\n"  # 2
    '"""\n'  # 3
    "y = 1 + \\\n"  # 4
    "    2\n"  # 5
    "z = [\n"  # 6
    "    1,\n"  # 7  inside brackets: a comment line is fine
    "]\n"  # 8
    "t = f'''{x}\n"  # 9
    "{y}'''\n"  # 10
    "w = 3  # done\n"  # 11
)


def test_safe_thought_lines_exclude_strings_and_backslash_continuations():
    assert sorted(safe_thought_lines(UNSAFE_SRC)) == [0, 1, 4, 6, 7, 8, 9, 11]
    assert safe_candidate_lines(UNSAFE_SRC) == [1, 4, 6, 7, 8, 9, 11]
    assert safe_thought_lines(UNSAFE_SRC, python=False) == set(range(12))
    original = ast.dump(ast.parse(UNSAFE_SRC))
    for line in range(12):
        infused = InfusedSnippet("u", UNSAFE_SRC, (Thought(line, "a thought"),)).render()
        try:
            same = ast.dump(ast.parse(infused)) == original
        except SyntaxError:
            same = False
        # the safe set is exact here: every other line changes or breaks the program
        assert same == (line in safe_thought_lines(UNSAFE_SRC)), line


def test_safe_lines_with_crlf_and_lone_cr():
    assert sorted(safe_thought_lines(UNSAFE_SRC.replace("\n", "\r\n"))) == [0, 1, 4, 6, 7, 8, 9, 11]
    # Python also breaks lines at a lone CR: the string opened on line 0 spans line 1
    assert sorted(safe_thought_lines("a = 1\rs = '''x\ny'''\nz = 2\n")) == [0, 2]


def test_safe_lines_headers():
    assert safe_thought_lines("#!/usr/bin/env python\nx = 1\n") == {1}
    assert safe_thought_lines("#!/usr/bin/env python\n# -*- coding: latin-1 -*-\nx = 1\n") == {2}
    assert safe_thought_lines("# coding=utf-8\nx = 1\n") == {1}
    assert safe_thought_lines("x = 1\n# coding: utf-8\ny = 2\n") == {0, 1, 2}  # not a cookie on line 2
    assert safe_thought_lines("\ufeffx = 1\ny = 2\n") == {1}


def test_text_that_does_not_tokenize_falls_back():
    # an indentation error on line 2: the lines after it fall back to all non-blank lines, even
    # line 4, which is inside the string opened on line 3
    bad_indent = "if x:\n        a\n    b\nc = '''\nd\n"
    assert safe_thought_lines(bad_indent) == {0, 1, 2, 3, 4}
    # an unterminated triple-quoted string: no later line is safe
    assert safe_thought_lines("x = 1\ns = '''\nabc\ndef\n") == {0, 1}
    # prose with apostrophes tokenizes leniently in 3.11 and errors in 3.12+; either way the
    # unmatched quote must not make later lines unsafe
    assert safe_thought_lines("it's here\nand there\n") == {0, 1}
