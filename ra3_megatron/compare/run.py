"""The comparison's driver: train every arm, read every arm, write the report. Resumable.

    OUT/state.json                 finished phases (a rerun skips them; the config must match)
    OUT/arms/ra3/                  the RA3 arm's EM run dir (`em.loop` layout)
    OUT/arms/ra3_c0.2/             an ablation arm's EM run dir
    OUT/arms/<control>/records.jsonl, data/, mstep/    a control arm (ntp, shuffled, null)
    OUT/arms/<arm>/train.json      steps and code tokens its M-step trained on
    OUT/arms/<arm>/measure.json    its measurements (per held-out snippet, per task)
    OUT/heldout.jsonl              the held-out snippets every arm is read on
    OUT/results.json, report.md, *.png, tb/

Equal code tokens: the RA3 arm trains with the M-step options given; a control arm's step count
is set so that its code tokens (steps x global batch x sequence length x the code share of its
data) equal those the RA3 arm's M-step trained on (measured from its metrics).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ra3_megatron.compare.arms import arm_records, read_infused, write_records
from ra3_megatron.compare.config import THINKING, CompareConfig, ablation_arm
from ra3_megatron.compare.measure import measure_arm
from ra3_megatron.em.loop import EMConfig, EMState, run_em
from ra3_megatron.em.phases import resolve_phase
from ra3_megatron.errors import InputError
from ra3_megatron.files import atomic_write_text


def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def _write_json(path: Path, body: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def mstep_code_tokens(mstep_dir: Path) -> tuple[int, float] | None:
    """(steps, code tokens trained on) of an M-step run dir, from its metrics.jsonl (the trainer
    logs every step; a resumed run may log a step twice, so steps are keyed by number)."""
    from ra3_megatron.megatron.metrics import read_metrics

    by_step = {r["step"]: r["code_tokens"] for r in read_metrics(Path(mstep_dir) / "metrics.jsonl")
               if "code_tokens" in r}
    if not by_step:
        return None
    return max(by_step), float(sum(by_step.values()))


def _code_share(prefix: str) -> float:
    s = _read_json(Path(f"{prefix}.summary.json"))
    total = s["tokens_with_eos"]
    return (total - s["latent_tokens"]) / total if total else 1.0


def run_compare(cfg: CompareConfig, *, make_engine: Callable[[str], Any],
                make_trainer: Callable[[str], Any] | None = None, progress: bool = True) -> dict[str, Any]:
    from ra3_megatron.compare.report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = EMState(out, json.loads(json.dumps(cfg.identity())), option="--out")
    arms = cfg.all_arms()

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if state.done(name):
            return
        _log(f"{name} ...")
        t0 = time.perf_counter()
        updates = fn() or {}
        state.mark(name, time.perf_counter() - t0, **updates)
        _log(f"{name} done in {time.perf_counter() - t0:.0f} s")

    phase("heldout", lambda: _heldout(cfg))  # first: a bad held-out set fails before any training
    for arm in arms:
        if arm == "ra3" or arm.startswith("ra3_c"):
            phase(f"train/{arm}", lambda arm=arm: _train_ra3(cfg, arm, make_engine, make_trainer, progress))
    for arm in arms:
        if arm in ("ntp", "shuffled", "null"):
            phase(f"data/{arm}", lambda arm=arm: _control_data(cfg, arm))
            phase(f"train/{arm}", lambda arm=arm: _train_control(cfg, arm, state))
    heldout = [(r["id"], r["text"]) for r in _jsonl(out / "heldout.jsonl")]
    # One engine reads every arm: it starts once (a vLLM start costs tens of seconds) and takes
    # each arm's weights in memory; all arms share the base model's architecture and tokenizer.
    reader = _Reader(make_engine)
    try:
        for arm in ["base", *arms]:
            phase(f"measure/{arm}", lambda arm=arm: _measure(cfg, arm, state, heldout, reader, progress))
    finally:
        reader.close()
    results = write_report(cfg, state.body, arms)
    _log(f"results: {out / 'results.json'}; report: {out / 'report.md'}")
    return results


def _em_config(cfg: CompareConfig, arm: str) -> EMConfig:
    estep = cfg.estep
    if arm != "ra3":
        estep = dataclasses.replace(cfg.estep, penalty=next(c for c in cfg.penalties if ablation_arm(c) == arm))
    return EMConfig(model=cfg.model, input=cfg.input, run_dir=str(Path(cfg.out) / "arms" / arm),
                    iterations=cfg.iterations, init=cfg.init, prepare=cfg.prepare, mstep=cfg.mstep,
                    prepare_runner=cfg.prepare_runner, mstep_runner=cfg.mstep_runner, nproc=cfg.nproc,
                    estep=estep)


def _train_ra3(cfg, arm, make_engine, make_trainer, progress) -> dict[str, Any]:
    em = run_em(_em_config(cfg, arm), make_engine=make_engine, make_trainer=make_trainer, progress=progress,
                log=_log)
    k = cfg.iterations
    run_dir = Path(cfg.out) / "arms" / arm
    # The final model trained on every round's code with init="previous", on the last round's
    # only with init="base" (each round restarts from the base model).
    first = 1 if cfg.init == "previous" else k
    rounds = [mstep_code_tokens(run_dir / f"iter_{i}" / "mstep") for i in range(first, k + 1)]
    measured = None if any(r is None for r in rounds) else sum(r[1] for r in rounds)
    steps = None if any(r is None for r in rounds) else sum(r[0] for r in rounds)
    _write_json(run_dir / "train.json", {"steps": steps, "code_tokens": measured,
                                         "data": em["data"][f"iter_{k}"], "estep": str(run_dir / f"iter_{k}" / "estep")})
    return {"models": {arm: em["models"][f"iter_{k}"]}, "data": {arm: em["data"][f"iter_{k}"]}}


def _control_data(cfg: CompareConfig, arm: str) -> dict[str, Any]:
    import shutil

    arm_dir = Path(cfg.out) / "arms" / arm
    infused = read_infused(Path(cfg.out) / "arms" / "ra3" / f"iter_{cfg.iterations}" / "estep")
    records = arm_dir / "records.jsonl"
    n, thoughts = write_records(records, arm_records(arm, infused, cfg.estep, seed=cfg.seed, null_text=cfg.null_text))
    _log(f"{arm}: {n} snippets, {thoughts} thoughts -> {records}")
    shutil.rmtree(arm_dir / "data", ignore_errors=True)
    (arm_dir / "data").mkdir(parents=True, exist_ok=True)
    prepare = dataclasses.replace(cfg.prepare, input=str(records), output=str(arm_dir / "data" / "train"),
                                  tokenizer=cfg.model)
    prefix = resolve_phase("prepare", cfg.prepare_runner)(prepare)
    return {"data": {arm: str(prefix)}}


def _train_control(cfg: CompareConfig, arm: str, state: EMState) -> dict[str, Any]:
    import shutil

    gbs, seq = cfg.mstep.global_batch_size, cfg.mstep.seq_length
    ra3 = _read_json(Path(cfg.out) / "arms" / "ra3" / "train.json")
    target = ra3["code_tokens"]
    if target is None:  # an M-step without metrics (a plugged-in one): estimate from the data
        rounds = cfg.iterations if cfg.init == "previous" else 1
        target = cfg.mstep.steps * rounds * gbs * seq * _code_share(ra3["data"])
    prefix = state.body["data"][arm]
    steps = max(1, round(target / (gbs * seq * _code_share(prefix))))
    arm_dir = Path(cfg.out) / "arms" / arm
    shutil.rmtree(arm_dir / "mstep", ignore_errors=True)
    _log(f"{arm}: {steps} M-step steps to match the ra3 arm's {target:,.0f} code tokens")
    mstep = dataclasses.replace(cfg.mstep, model=cfg.model, data=prefix, out=str(arm_dir / "mstep"), steps=steps)
    hf = resolve_phase("mstep", cfg.mstep_runner)(mstep, nproc=cfg.nproc, iteration=0)
    measured = mstep_code_tokens(arm_dir / "mstep")
    _write_json(arm_dir / "train.json", {"steps": steps, "code_tokens": measured[1] if measured else None,
                                         "target_code_tokens": target, "data": prefix})
    return {"models": {arm: str(hf)}}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _heldout(cfg: CompareConfig) -> dict[str, Any]:
    """The held-out snippets (chunked as the E-step chunks), checked for overlap with training."""
    from transformers import AutoTokenizer

    from ra3_megatron.estep.infuse import iter_snippets

    # The tokenizer the engines use (they load it from the model dir): chunks as the E-step's.
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    snippets = list(iter_snippets(cfg.heldout, tokenizer, cfg.estep))
    if cfg.heldout_limit:
        snippets = snippets[: cfg.heldout_limit]
    if not snippets:
        raise InputError(Path(cfg.heldout), "no held-out snippets")
    training = {text.strip() for _, text in iter_snippets(cfg.input, tokenizer, cfg.estep)}
    shared = [sid for sid, text in snippets if text.strip() in training]
    if shared:
        raise InputError(Path(cfg.heldout), f"{len(shared)} held-out snippet(s) also in the training input "
                         f"(first: {shared[0]}); hold out other files")
    _write_json_lines(Path(cfg.out) / "heldout.jsonl", [{"id": sid, "text": text} for sid, text in snippets])
    _log(f"held-out: {len(snippets)} snippets from {cfg.heldout}")
    return {}


def _write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class _Reader:
    """The engine the arms are read with: started on the first arm's model, then reloaded."""

    def __init__(self, make_engine: Callable[[str], Any]):
        self.make_engine, self.engine, self.model = make_engine, None, None

    def load(self, model: str):
        if self.engine is None:
            self.engine = self.make_engine(model)
        elif model != self.model:
            self.engine.load_weights(model)
        self.model = model
        return self.engine

    def close(self) -> None:
        from ra3_megatron.rollout.common import release_cuda_memory

        if self.engine is not None:
            self.engine.close()
            self.engine = None
            release_cuda_memory()


def _measure(cfg, arm, state, heldout, reader: _Reader, progress) -> dict[str, Any]:
    from ra3_megatron.core.latent import InfusedSnippet

    arm_dir = Path(cfg.out) / "arms" / arm
    if arm == "base":
        model, train = cfg.model, []
    else:
        model = state.body["models"][arm]
        source = (Path(cfg.out) / "arms" / arm / f"iter_{cfg.iterations}" / "estep" if arm not in ("ntp", "shuffled", "null")
                  else arm_dir / "records.jsonl")
        train = (read_infused(source) if source.is_dir()
                 else [InfusedSnippet.from_record(r) for r in _jsonl(source)])
    thinking = arm in THINKING or arm.startswith("ra3_c")
    from ra3_megatron.estep.thinking import candidate_lines

    positions = sum(len(candidate_lines(s.text, cfg.estep)) for s in train)
    body = measure_arm(arm, reader.load(str(model)), cfg, heldout=heldout, train=train, thinking=thinking,
                       out_dir=arm_dir, progress=progress)
    body["model"] = str(model)
    if thinking and positions:
        body["infused_think_rate"] = sum(len(s.thoughts) for s in train) / positions
    _write_json(arm_dir / "measure.json", body)
    return {}

