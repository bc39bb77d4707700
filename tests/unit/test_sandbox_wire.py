"""The plain-data wire format: exact round trips, and nothing but plain data gets through."""

from __future__ import annotations

import collections
import decimal
import fractions
import json
import math
import socket

import pytest

from ra3_megatron.eval.wire import MAX_DEPTH, Ref, decode, encode, recv_msg, send_msg

pytestmark = pytest.mark.unit


def roundtrip(value):
    return decode(json.loads(json.dumps(encode(value))))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**200,
        -(3**5000),
        1.5,
        -0.0,
        float("inf"),
        "",
        "héllo\n\udc80",
        [1, [2, (3, 4)]],
        (),
        (1,),
        {"a": 1, 2: [3], (4, 5): None},
        {1, 2},
        frozenset({"x"}),
        b"\x00\xff",
        bytearray(b"ab"),
        3 + 4j,
        range(2, 10, 3),
        collections.deque([1, 2]),
        collections.Counter("abca"),
        collections.OrderedDict([("b", 1), ("a", 2)]),
        decimal.Decimal("1.10"),
        fractions.Fraction(3, 7),
    ],
)
def test_plain_values_round_trip_exactly(value):
    back = roundtrip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, back) == math.copysign(1, value)


def test_nan_and_dict_views_and_iterators():
    assert math.isnan(roundtrip(float("nan")))
    d = {"a": 1, "b": 2}
    assert roundtrip(d.keys()) == {"a", "b"} and list(roundtrip(d.keys())) == ["a", "b"]
    assert list(roundtrip(d.values())) == [1, 2]
    assert roundtrip(d.items()) == {("a", 1), ("b", 2)}
    assert list(roundtrip(map(str, [1, 2]))) == ["1", "2"]
    assert list(roundtrip(x * x for x in range(3))) == [0, 1, 4]


def test_an_object_whose_eq_always_answers_true_cannot_be_sent():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    for value in (AlwaysEqual(), [1, AlwaysEqual()], {"k": AlwaysEqual()}, lambda: 1, object()):
        with pytest.raises(TypeError, match="cannot send"):
            encode(value)


def test_builtin_subclasses_are_read_through_their_real_storage():
    class LyingInt(int):
        def __eq__(self, other):
            return True

        def __int__(self):
            return 42

    class LyingList(list):
        def __iter__(self):
            return iter([99])

    class LyingStr(str):
        def __str__(self):
            return "forged"

    back = roundtrip([LyingInt(3), LyingList([1, 2]), LyingStr("real")])
    assert back == [3, [1, 2], "real"]
    assert [type(x) for x in back] == [int, list, str]
    assert collections.namedtuple("P", "x y")(1, 2) == roundtrip(collections.namedtuple("P", "x y")(1, 2))
    assert type(roundtrip(collections.namedtuple("P", "x y")(1, 2))) is tuple


def test_limits_on_depth_and_size():
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="deeply"):
        encode(deep)

    def endless():
        while True:
            yield 1

    with pytest.raises(TypeError, match="too large"):
        encode(endless())


def test_refs_resolve_only_where_names_are_given():
    tree = encode([Ref("root"), 1])
    assert decode(tree, {"root": "the object"}) == ["the object", 1]
    with pytest.raises(ValueError, match="unknown wire tag"):
        decode(tree)


def test_messages_are_framed_over_a_stream_socket():
    a, b = socket.socketpair()
    with a, b:
        send_msg(a, {"x": [1, 2]})
        send_msg(a, {"y": "z" * 100_000})
        assert recv_msg(b) == {"x": [1, 2]}
        assert recv_msg(b)["y"] == "z" * 100_000
        a.close()
        with pytest.raises(EOFError):
            recv_msg(b)
