"""`ra3 plan`: GPU memory per phase of a recipe, before any GPU is touched.

The model is built on the meta device from its HF config (the checkpoint's config.json, or for
the GPU recipes' models, when the checkpoint is not on this machine, their published
architecture) and its parameters are counted per rank for a layout: column- and row-parallel
projections and the vocabulary-parallel embedding and output layer divide by TP; norms are
replicated; PP splits the layers (the first stage holds the embedding, the last the output
layer). Per phase and GPU:

- trainer: bf16 weights (2 B/param; fp32 4 B without bf16), fp32 gradient buffer (4 B, Megatron
  DDP with grad_reduce_in_fp32), Adam with fp32 main weights (12 B, over DP with the
  distributed optimizer), activations (34 * s * b * h bytes per layer / TP with flash attention
  and selective recompute, as in Korthikanti et al. 2022; 1F1B keeps up to PP micro-batches
  on the first stage) and fp32 logits with their gradient (8 * s * b * V / TP);
- rollout engines (vLLM): weights (bf16 / rollout TP) inside the memory share vLLM takes at start
  (`gpu_memory_utilization`: 45% of the memory free then, per engine, as `rollout.vllm_engine`
  does); the rest of the share is the KV cache budget;
- a fixed 2 GiB per GPU for the CUDA context, NCCL and allocator slack.

Figures are GiB (the "80 GB" of an H100 is 80 GiB). FP8 through Transformer Engine keeps bf16
weights beside its FP8 copies, so these bf16 estimates are a floor for FP8 recipes.

The phases follow the runtime: the M-step at the recipe's TP/PP/DP; q's RL trainer and GRPO's over
all the job's GPUs at the recipe's `rl.tp` x `rl.pp` (DP the rest, Adam sharded over DP; one rank,
full Adam state, when the recipe runs as one process), beside their engines on every GPU (two for
the E-step: pi and q; one for GRPO, at the recipe's `rollout_tp`), which sleep during the update.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError

GIB = 2**30
OVERHEAD_GB = 2.0
ENGINE_SHARE = 0.45  # of the memory free when an engine starts (rollout.vllm_engine)

# Published config.json values of the GPU recipes' models, for machines without the checkpoint.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Shape:
    """The parameters of a model by role (counted on the meta device), and its sizes."""

    embedding: int
    output: int  # 0 when tied to the embedding
    per_layer_sharded: int  # projections (divided by TP)
    per_layer_replicated: int  # norms
    final_norm: int
    layers: int
    hidden: int
    vocab: int
    heads: int

    @property
    def total(self) -> int:
        return (self.embedding + self.output + self.final_norm
                + self.layers * (self.per_layer_sharded + self.per_layer_replicated))

    def per_rank(self, tp: int, pp: int) -> int:
        """Parameters on the rank of the largest pipeline stage."""
        body = math.ceil(self.layers / pp) * (self.per_layer_sharded // tp + self.per_layer_replicated)
        if pp == 1:
            return body + (self.embedding + self.output) // tp + self.final_norm
        first = body + self.embedding // tp
        last = body + (self.output or self.embedding) // tp + self.final_norm  # tied: a copy on the last stage
        return max(first, last)


def model_config(model: str):
    """The HF config of `model`: its config.json, else a published architecture by directory name."""
    from transformers import AutoConfig

    path = Path(model)
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path))
    for name, arch in ARCHITECTURES.items():
        if path.name == name:
            values = dict(arch)
            return AutoConfig.for_model(values.pop("model_type"), **values)
    raise ConfigError(f"{model}: no config.json there, and not one of the known architectures "
                      f"({', '.join(ARCHITECTURES)}); point the recipe's em.model at the checkpoint")


def model_shape(config) -> Shape:
    """Count the parameters of the model built on the meta device, by role."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    roles = dict(embedding=0, output=0, sharded=0, replicated=0, final_norm=0)
    for name, p in model.named_parameters():  # tied weights are listed once
        n = p.numel()
        if "embed_tokens" in name:
            roles["embedding"] += n
        elif name.startswith("lm_head"):
            roles["output"] += n
        elif ".layers." in name:
            roles["replicated" if "norm" in name else "sharded"] += n
        else:
            roles["final_norm"] += n
    layers = config.num_hidden_layers
    return Shape(embedding=roles["embedding"], output=roles["output"], per_layer_sharded=roles["sharded"] // layers,
                 per_layer_replicated=roles["replicated"] // layers, final_norm=roles["final_norm"], layers=layers,
                 hidden=config.hidden_size, vocab=config.vocab_size, heads=config.num_attention_heads)


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    distributed_optimizer: bool = True

    def __str__(self) -> str:
        return f"TP={self.tp} PP={self.pp} DP={self.dp}" + (" dist-opt" if self.distributed_optimizer else "")


@dataclass
class Phase:
    name: str
    layout: str
    parts: dict[str, float]  # GiB per GPU
    note: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def trainer_parts(shape: Shape, layout: Layout, *, seq: int, micro_batch: int, bf16: bool = True,
                  sequence_parallel: bool = False) -> dict[str, float]:
    params = shape.per_rank(layout.tp, layout.pp)
    optimizer = (12 if bf16 else 8) * params / (layout.dp if layout.distributed_optimizer else 1)
    t = layout.tp
    per_layer = seq * micro_batch * shape.hidden * (34 / t if sequence_parallel or t == 1 else 10 + 24 / t)
    act = per_layer * math.ceil(shape.layers / layout.pp) * layout.pp  # 1F1B: PP micro-batches in flight
    logits = 8 * seq * micro_batch * shape.vocab / t
    return {"weights": (2 if bf16 else 4) * params / GIB, "grads": 4 * params / GIB, "optimizer": optimizer / GIB,
            "activations": (act + logits) / GIB}


def resident(parts: dict[str, float]) -> dict[str, float]:
    """What the trainer keeps while its engines sample: all but the activations."""
    return {k: v for k, v in parts.items() if k != "activations"}


def engine_parts(shape: Shape, *, engines: int, gpu_gb: float, used_gb: float, rollout_tp: int = 1,
                 fraction: float | None = None) -> dict[str, float]:
    """vLLM engines started one after the other, each taking ENGINE_SHARE of the free memory, or
    `fraction` of the GPU each when the recipe sets it (vLLM refuses to start when that much is
    not free: `_short` says by how much the last one lacked)."""
    weights = 2 * shape.total / rollout_tp / GIB
    free, share_total, kv, short = gpu_gb - used_gb, 0.0, [], 0.0
    for _ in range(engines):
        share = ENGINE_SHARE * free if fraction is None else fraction * gpu_gb
        short = max(short, share - free)
        share_total += share
        kv.append(share - weights)
        free -= share
    return {"engine weights": weights * engines, "engine KV": sum(kv), "_min_kv": min(kv), "_share": share_total,
            "_short": short}


def plan_recipe(recipe, *, gpus: int, gpu_gb: float) -> tuple[list[Phase], Shape]:
    """The per-phase memory table of an EM recipe at `gpus` GPUs of `gpu_gb` GB."""
    values = dataclasses.asdict(recipe.em.mstep)
    shape = model_shape(model_config(recipe.em.model))
    tp, pp = int(values["tp"]), int(values["pp"])
    note = ""
    if gpus % (tp * pp):
        note = f"the recipe's TP x PP = {tp * pp} needs a multiple of {tp * pp} GPUs; shown at TP = PP = 1"
        tp = pp = 1
    bf16 = values["bf16"] is not False
    m_layout = Layout(tp, pp, gpus // (tp * pp), bool(values["distributed_optimizer"]))
    phases = [Phase("M-step", str(m_layout), trainer_parts(
        shape, m_layout, seq=int(values["seq_length"]), micro_batch=int(values["micro_batch_size"]), bf16=bf16,
        sequence_parallel=bool(values["sequence_parallel"]) and tp > 1), note=note)]
    estep = recipe.em.estep
    rl_layout, rl_note = rl_trainer_layout(recipe, gpus)
    rollout_tp = recipe.engines.rollout_tp
    rl = trainer_parts(shape, rl_layout, seq=estep.max_rl_tokens, micro_batch=min(estep.micro_batch, 4),
                       sequence_parallel=rl_layout.tp > 1)
    held = resident(rl)
    fraction = recipe.engines.memory_fraction
    n_engines = 1 if recipe.engines.share_pi_q else 2  # share_pi_q: one engine, the other role's weights on the host
    eng = engine_parts(shape, engines=n_engines, gpu_gb=gpu_gb, used_gb=sum(held.values()) + OVERHEAD_GB,
                       rollout_tp=rollout_tp, fraction=fraction)
    engines_text = ("1 vLLM engine for both, weights swapped" if n_engines == 1 else "2 vLLM engines")
    phases.append(Phase("E-step rollouts (pi, q)", f"q's trainer {rl_layout} + {engines_text} (TP={rollout_tp})",
                        {**held, "engine weights": eng["engine weights"], "engine KV": max(0.0, eng["engine KV"])},
                        note=_engine_note(eng) or rl_note))
    phases.append(Phase("E-step q's RL update", f"{rl_layout} (engines asleep)", rl, note=rl_note))
    from ra3_megatron.rlvr.config import GRPOConfig

    grpo_cfg = GRPOConfig()
    grpo = trainer_parts(shape, rl_layout, seq=grpo_cfg.max_seq_tokens, micro_batch=grpo_cfg.micro_batch,
                         sequence_parallel=rl_layout.tp > 1)
    g_eng = engine_parts(shape, engines=1, gpu_gb=gpu_gb, used_gb=sum(resident(grpo).values()) + OVERHEAD_GB,
                         rollout_tp=rollout_tp, fraction=fraction)
    phases.append(Phase("GRPO rollouts", f"trainer {rl_layout} + 1 vLLM engine (TP={rollout_tp})",
                        {**resident(grpo), "engine weights": g_eng["engine weights"],
                         "engine KV": max(0.0, g_eng["engine KV"])}, note=_engine_note(g_eng) or rl_note))
    phases.append(Phase("GRPO update", f"{rl_layout} (engine asleep)", grpo, note=rl_note))
    for p in phases:
        p.parts["overhead"] = OVERHEAD_GB
    return phases, shape


def rl_trainer_layout(recipe, gpus: int) -> tuple[Layout, str]:
    """The RL trainers' layout: over the job's GPUs at the recipe's rl.tp x rl.pp (distributed
    optimizer) when the recipe runs as a job, else one rank."""
    if int(getattr(recipe, "ranks", 1)) <= 1:
        return Layout(1, 1, 1, False), ""
    tp, pp = recipe.rl.tp, recipe.rl.pp
    if gpus % (tp * pp):
        return Layout(1, 1, gpus, True), f"rl.tp x rl.pp = {tp * pp} needs a multiple of {tp * pp} GPUs"
    return Layout(tp, pp, gpus // (tp * pp), True), ""


def _engine_note(eng: dict[str, float]) -> str:
    if eng["_short"] > 0:
        return f"the engines' memory fraction asks for {eng['_short']:.1f} GiB more than is free beside the trainer"
    if eng["_min_kv"] < 1.0:
        return "an engine's memory share does not hold its weights plus 1 GiB of KV cache"
    return ""


def fits(phase: Phase, gpu_gb: float) -> bool:
    return phase.total <= gpu_gb and not phase.note


def fitting_trainer_layout(shape: Shape, *, gpus: int, gpu_gb: float, seq: int, micro_batch: int,
                           engines_gb: float = 0.0) -> Layout | None:
    """The smallest TP x PP (distributed optimizer, sequence parallel) whose trainer fits beside
    `engines_gb` of engine memory, or None."""
    for tp, pp in sorted(((t, p) for t in (1, 2, 4, 8) for p in (1, 2, 4, 8) if gpus % (t * p) == 0
                          and shape.heads % t == 0), key=lambda x: (x[0] * x[1], x[1])):
        layout = Layout(tp, pp, gpus // (tp * pp), True)
        parts = trainer_parts(shape, layout, seq=seq, micro_batch=micro_batch, sequence_parallel=tp > 1)
        if sum(parts.values()) + engines_gb + OVERHEAD_GB <= gpu_gb:
            return layout
    return None


def format_table(phases: list[Phase], gpu_gb: float) -> str:
    keys = ["weights", "grads", "optimizer", "activations", "engine weights", "engine KV", "overhead"]
    rows = [["phase", "layout", *keys, "total", "fits"]]
    for p in phases:
        rows.append([p.name, p.layout, *(f"{p.parts[k]:.1f}" if k in p.parts else "-" for k in keys),
                     f"{p.total:.1f}", "yes" if fits(p, gpu_gb) else "NO"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
