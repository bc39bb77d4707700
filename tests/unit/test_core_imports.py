"""Import hygiene: the package and its pure core never pull in Megatron, vLLM, TE or torch.distributed."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ra3_megatron.core

pytestmark = pytest.mark.unit

HEAVY = ("megatron", "vllm", "transformer_engine", "torch.distributed")
CORE_DIR = Path(ra3_megatron.core.__file__).parent
OWN_BY_OTHERS = {"losses.py"}  # tensor losses: imported on their own, they need torch


def _loaded_after(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heavy(loaded: list[str], prefixes=HEAVY) -> list[str]:
    return [m for m in loaded if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_package_and_cli_import_no_heavy_backend():
    modules = ["ra3_megatron", "ra3_megatron.core"]
    modules += [m for m in ("ra3_megatron.data", "ra3_megatron.cli.main") if importlib.util.find_spec(m)]
    loaded = _loaded_after(modules)
    assert "ra3_megatron.core" in loaded
    assert _heavy(loaded) == []


def test_core_imports_no_torch_at_all():
    loaded = _loaded_after(["ra3_megatron.core"])
    assert _heavy(loaded, ("torch", "transformers", "tokenizers", *HEAVY)) == []


def test_core_modules_import_only_stdlib_numpy_and_core():
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__"}
    checked = 0
    for path in sorted(CORE_DIR.glob("*.py")):
        if path.name in OWN_BY_OTHERS:
            continue
        checked += 1
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or name.startswith("ra3_megatron.core")
                assert ok, f"{path.name}:{node.lineno}: imports {name}"
    assert checked >= 6
