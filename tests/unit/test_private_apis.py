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
]
# Worker-side calls, named as private_apis names them.
WORKER_CALLS = {
    re.compile(r'collective_rpc\("reload_weights"'): "vllm worker: reload_weights",
    re.compile(r"process_weights_after_loading"): "vllm worker: get_model / quant_method.process_weights_after_loading",
}


def used_private_apis(root: Path) -> set[tuple[str, str]]:
    found = set()
    for path in sorted(root.glob("*.py")):
        if path.name == "private_apis.py":
            continue
        text = path.read_text(encoding="utf-8")
        for m in PATTERNS[0].finditer(text):
            found.add((path.name, m.group(0)))
        for m in PATTERNS[1].finditer(text):
            for name in m.group(2).split(","):
                if name.strip() not in ("DynamicCache",):  # the public cache class
                    found.add((path.name, f"{m.group(1)}.{name.strip()}"))
        if PATTERNS[2].search(text):
            found.add((path.name, "vllm.v1.engine.core.cleanup_dist_env_and_memory"))
        for m in PATTERNS[3].finditer(text):
            found.add((path.name, f"{m.group(1)}.{m.group(2)}"))
        found |= {(path.name, api) for pattern, api in WORKER_CALLS.items() if pattern.search(text)}
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
