"""Plain-data wire format between the checker and a sandboxed program (stdlib only).

Only plain data crosses the sandbox boundary: None, bool, int, float, complex, str, bytes and
list / tuple / dict / set / frozenset / range of them, plus a few standard containers rebuilt on
the trusted side (deque, Counter, OrderedDict, Decimal, Fraction, dict views) and iterators,
which are materialized into a list iterator. Anything else (a class instance, a function, an
object whose `__eq__` always answers True) cannot be sent: `encode` raises TypeError.

Subclasses of the builtin types are read through the base type's C slots (`int.__int__`,
`tuple.__iter__`, `dict.items`, ...), so a subclass cannot change what is sent by overriding
methods. The trusted side therefore only ever compares objects it built itself.

Encoding is JSON: lists are JSON arrays, every other container is a one-key object whose key
names the type ({"T": [...]} is a tuple). Messages are length-prefixed JSON on a stream socket.

This file is also prepended to the in-sandbox server's source (see `_zygote.py`), so it must
stay self-contained: standard library only, no package-relative imports.
"""

import base64
import json
import struct

MAX_MESSAGE_BYTES = 64 << 20
MAX_ITEMS = 2_000_000  # elements per encoded value (an infinite generator stops here)
MAX_DEPTH = 200
_HEADER = struct.Struct(">I")
_BIG_INT_BITS = 4096  # above this, ints go as hex (json's str() conversion has a digit limit)

_DICT_KEYS = type({}.keys())
_DICT_VALUES = type({}.values())
_DICT_ITEMS = type({}.items())


class Ref:
    """A name in the sandboxed program's globals, sent by reference (e.g. an object built by
    MBPP's test_setup_code from the program's own class); only the trusted side creates these."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<program object {self.name}>"


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_ITEMS


def encode(value):
    """A JSON-ready tree for a plain-data value; TypeError for anything else."""
    return _enc(value, _Budget(), 0)


def _enc(v, budget, depth):  # noqa: C901 - one flat type dispatch reads best
    budget.left -= 1
    if budget.left < 0:
        raise TypeError(f"value too large to send (over {MAX_ITEMS} elements)")
    if depth > MAX_DEPTH:
        raise TypeError(f"value nested too deeply to send (over {MAX_DEPTH} levels)")
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if v.bit_length() <= _BIG_INT_BITS else {"I": format(v, "x")}
    d = depth + 1
    if t is list:
        return [_enc(x, budget, d) for x in v]
    if t is tuple:
        return {"T": [_enc(x, budget, d) for x in v]}
    if t is dict:
        return {"D": [[_enc(k, budget, d), _enc(x, budget, d)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"S" if t is set else "F": [_enc(x, budget, d) for x in v]}
    if t is bytes or t is bytearray:
        return {"B" if t is bytes else "BA": base64.b64encode(v).decode("ascii")}
    if t is complex:
        return {"C": [v.real, v.imag]}
    if t is range:
        return {"R": [v.start, v.stop, v.step]}
    if t is _DICT_KEYS or t is _DICT_VALUES:
        return {"KV" if t is _DICT_KEYS else "VV": [_enc(x, budget, d) for x in v]}
    if t is _DICT_ITEMS:
        return {"IV": [[_enc(k, budget, d), _enc(x, budget, d)] for k, x in v]}
    if t is Ref:
        return {"REF": v.name}
    mod, name = getattr(t, "__module__", ""), getattr(t, "__qualname__", "")
    if mod == "collections" and name == "deque":
        return {"Q": [_enc(x, budget, d) for x in v]}
    if mod == "decimal" and name == "Decimal":
        return {"DEC": str(v)}
    if mod == "fractions" and name == "Fraction":
        return {"FR": [int.__int__(v.numerator), int.__int__(v.denominator)]}
    # Subclasses of builtins: read the real storage through the base type's slots.
    if isinstance(v, int):
        return _enc(int.__int__(v), budget, depth)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, dict):
        pairs = [[_enc(k, budget, d), _enc(x, budget, d)] for k, x in dict.items(v)]
        tag = {"Counter": "CT", "OrderedDict": "OD"}.get(name, "D") if mod == "collections" else "D"
        return {tag: pairs}
    if isinstance(v, tuple):
        return {"T": [_enc(x, budget, d) for x in tuple.__iter__(v)]}
    if isinstance(v, list):
        return [_enc(x, budget, d) for x in list.__iter__(v)]
    if isinstance(v, (set, frozenset)):
        base = set if isinstance(v, set) else frozenset
        return {"S" if base is set else "F": [_enc(x, budget, d) for x in base.__iter__(v)]}
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):  # generator, map, filter, zip, ...
        out = []
        for x in v:
            out.append(_enc(x, budget, d))
        return {"IT": out}
    raise TypeError(f"cannot send a {mod}.{name} (only plain data crosses the sandbox boundary)")


def decode(tree, refs=None):
    """The value for a tree made by `encode` (builds only standard types). `refs` maps the
    names of Ref trees to objects (the sandbox side); without it a Ref tree is an error."""
    if type(tree) is list:
        return [decode(x, refs) for x in tree]
    if type(tree) is not dict:
        return tree
    ((tag, x),) = tree.items()
    if tag == "T":
        return tuple(decode(i, refs) for i in x)
    if tag in ("D", "CT", "OD"):
        d = {decode(k, refs): decode(v, refs) for k, v in x}
        if tag == "D":
            return d
        import collections

        return collections.Counter(d) if tag == "CT" else collections.OrderedDict(d)
    if tag in ("S", "F"):
        items = (decode(i, refs) for i in x)
        return set(items) if tag == "S" else frozenset(items)
    if tag == "I":
        return int(x, 16)
    if tag in ("B", "BA"):
        raw = base64.b64decode(x)
        return raw if tag == "B" else bytearray(raw)
    if tag == "C":
        return complex(x[0], x[1])
    if tag == "R":
        return range(x[0], x[1], x[2])
    if tag == "KV":
        return dict.fromkeys(decode(i, refs) for i in x).keys()
    if tag == "VV":
        return dict(enumerate(decode(i, refs) for i in x)).values()
    if tag == "IV":
        return {decode(k, refs): decode(v, refs) for k, v in x}.items()
    if tag == "REF" and refs is not None:
        return refs[x]
    if tag == "IT":
        return iter([decode(i, refs) for i in x])
    if tag == "Q":
        import collections

        return collections.deque(decode(i, refs) for i in x)
    if tag == "DEC":
        import decimal

        return decimal.Decimal(x)
    if tag == "FR":
        import fractions

        return fractions.Fraction(x[0], x[1])
    raise ValueError(f"unknown wire tag {tag!r}")


def send_msg(sock, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_msg(sock):
    """The next message; EOFError when the peer closed the connection."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    return json.loads(_recv_exact(sock, size).decode("utf-8"))


def _recv_exact(sock, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
