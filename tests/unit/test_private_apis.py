"""Every private torch / transformers / vLLM API a rollout module uses is listed, with its versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ra3_megatron.rollout as rollout
from ra3_megatron.rollout.private_apis import PRIVATE_APIS

pytestmark = pytest.mark.unit

# What counts as private: a torch op whose name starts with "_", transformers' internal modules,
# vLLM's engine core and parallel state.
PATTERNS = [
    re.compile(r"torch\.ops\.\w+\._\w+"),
    re.compile(r"from (transformers\.(?:cache_utils|modeling_utils|masking_utils)) import ([\w, ]+)"),
    re.compile(r"(vllm\.v1\.engine\.core)"),
    re.compile(r"from (vllm\.distributed) import (parallel_state)"),
    re.compile(r"from (torch\.[\w.]+) import ((?:_\w+(?:, )?)+)"),
]
# Worker-side calls, named as private_apis names them.
WORKER_CALLS = {
    re.compile(r'collective_rpc\("reload_weights"'): "vllm worker: reload_weights",
    re.compile(r"process_weights_after_loading"): "vllm worker: get_model / quant_method.process_weights_after_loading",
}


def used_private_apis(root: Path) -> set[tuple[str, str]]:
    found = set()
    for file in sorted(root.rglob("*.py")):
        path = file.relative_to(root)
        if path.name == "private_apis.py":
            continue
        text = file.read_text(encoding="utf-8")
        for m in PATTERNS[0].finditer(text):
            found.add((path.as_posix(), m.group(0)))
        for m in PATTERNS[1].finditer(text):
            for name in m.group(2).split(","):
                if name.strip() not in ("DynamicCache",):  # the public cache class
                    found.add((path.as_posix(), f"{m.group(1)}.{name.strip()}"))
        if PATTERNS[2].search(text):
            found.add((path.as_posix(), "vllm.v1.engine.core.cleanup_dist_env_and_memory"))
        for m in PATTERNS[3].finditer(text):
            found.add((path.as_posix(), f"{m.group(1)}.{m.group(2)}"))
        for m in PATTERNS[4].finditer(text):
            found |= {(path.as_posix(), f"{m.group(1)}.{name.strip()}") for name in m.group(2).split(",")}
        found |= {(path.as_posix(), api) for pattern, api in WORKER_CALLS.items() if pattern.search(text)}
    return found


def test_every_private_api_in_use_is_listed_with_where():
    used = used_private_apis(Path(rollout.__file__).parent)
    assert used, "the scan found nothing: its patterns are out of date"
    unlisted = sorted(f"{f}: {api}" for f, api in used if api not in PRIVATE_APIS)
    assert unlisted == [], "list these in ra3_megatron/rollout/private_apis.py"
    misplaced = sorted(f"{f}: {api}" for f, api in used if f not in PRIVATE_APIS[api].used_in)
    assert misplaced == []
    stale = sorted(set(PRIVATE_APIS) - {api for _, api in used})
    assert stale == [], "no longer used: drop them from the list"


def test_the_scan_catches_a_new_private_use(tmp_path):
    (tmp_path / "new.py").write_text("y = torch.ops.aten._secret_kernel(x)\n")
    assert used_private_apis(tmp_path) == {("new.py", "torch.ops.aten._secret_kernel")}


def test_the_reference_engine_uses_public_apis_only():
    """`hf` is the readable reference: the private calls live in the opt-in accelerator (cpu_accel/)
    and in the vLLM engine, never in hf_engine.py."""
    used = used_private_apis(Path(rollout.__file__).parent)
    assert not [api for f, api in used if f == "hf_engine.py"]
    assert any(f.startswith("cpu_accel/") for f, _ in used)  # the scan does reach the subpackage
