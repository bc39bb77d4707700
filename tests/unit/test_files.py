"""atomic_write_text: writers racing on one path (ranks finishing an E-step together) never break
each other's write, and readers only ever see a whole file."""

from __future__ import annotations

import threading

import pytest

from ra3_megatron.files import atomic_write_text

pytestmark = pytest.mark.unit


def test_writers_racing_on_one_path_all_succeed(tmp_path):
    path = tmp_path / "manifest.json"
    texts = [f"writer {w}\n" * 2000 for w in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(40):
                atomic_write_text(path, text)
                assert path.read_text() in texts  # whole, never a mix or a half
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary file left
