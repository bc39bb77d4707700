"""results.json, report.md, plots and TensorBoard scalars of a comparison.

"As used" is how each model is used at inference: the NTP and base models read code plainly;
a model trained with thoughts writes its own (held-out CE with thinking). The verdict compares
RA3 as used against NTP and both controls as used; the plain CE of every arm is reported too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ra3_megatron.compare.config import CompareConfig
from ra3_megatron.compare.stats import file_of, paired_ce_diff, paired_rate_diff, pooled_ce_interval
from ra3_megatron.files import atomic_write_text

PAIRS = (("ra3", "ntp"), ("shuffled", "ntp"), ("null", "ntp"), ("ra3", "shuffled"), ("ra3", "null"))


def _load(out: Path, arm: str, name: str) -> dict[str, Any]:
    path = out / "arms" / arm / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _as_used(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("heldout_thinking") or m["heldout"]


def _files(m: dict[str, Any]) -> list[str]:
    """The bootstrap's resampling unit for each held-out snippet: its file."""
    return [file_of(sid) for sid in m["heldout"]["ids"]]


def arm_summary(arm: str, m: dict[str, Any], train: dict[str, Any], cfg: CompareConfig, seed: int) -> dict[str, Any]:
    n = cfg.bootstrap
    h = m["heldout"]
    row: dict[str, Any] = {
        "model": m.get("model"),
        "steps": train.get("steps"),
        "code_tokens": train.get("code_tokens"),
        "heldout_ce": pooled_ce_interval(h["nll"], h["tokens"], resamples=n, seed=seed, units=_files(m)),
        "heldout_tokens": int(sum(h["tokens"])),
    }
    if "heldout_thinking" in m:
        t = m["heldout_thinking"]
        row["heldout_ce_thinking"] = pooled_ce_interval(t["nll"], t["tokens"], resamples=n, seed=seed,
                                                        units=_files(m))
        row.update({k: t[k] for k in ("think_rate", "mean_thought_tokens", "mean_q_think", "failed_samples",
                                      "token_count_mismatches", "misaligned_thoughts") if k in t})
    if m.get("infused_think_rate") is not None:
        row["infused_think_rate"] = m["infused_think_rate"]
    if m.get("train", {}).get("tokens"):
        row["train_ce"] = sum(m["train"]["nll"]) / sum(m["train"]["tokens"])
    for name, got in m.get("pass1", {}).items():
        row.setdefault("pass1", {})[name] = sum(got["passed"]) / len(got["passed"]) if got["passed"] else None
    return row


def diff(a: dict[str, Any], b: dict[str, Any], cfg: CompareConfig, seed: int) -> dict[str, Any]:
    n = cfg.bootstrap
    # Code tokens are the plain text's in every reading (estep.thinking), so the plain counts
    # are the denominator of every difference; a reading that counted others is flagged.
    tokens, files = a["heldout"]["tokens"], _files(a)
    plain = paired_ce_diff(a["heldout"]["nll"], b["heldout"]["nll"], tokens, resamples=n, seed=seed, units=files)
    ua, ub = _as_used(a), _as_used(b)
    used = paired_ce_diff(ua["nll"], ub["nll"], tokens, resamples=n, seed=seed, units=files)
    if ua["tokens"] != tokens or ub["tokens"] != tokens:
        used["token_counts_differ"] = True
    out = {"metric": "heldout_ce", **plain, "as_used": used}
    for name in a.get("pass1", {}):
        if name in b.get("pass1", {}):
            out.setdefault("pass1", {})[name] = paired_rate_diff(a["pass1"][name]["passed"], b["pass1"][name]["passed"],
                                                                 resamples=n, seed=seed)
    return out


def verdict(diffs: dict[str, Any]) -> str:
    needed = [k for k in ("ra3-ntp", "ra3-shuffled", "ra3-null") if k in diffs]
    if not needed:
        return "No verdict: the comparison lacks the ntp and control arms."
    if any(not all(math.isfinite(x) for x in diffs[k]["as_used"]["ci95"]) or diffs[k]["as_used"].get("token_counts_differ")
           for k in needed):
        return "No verdict: an interval is undefined or the arms' code tokens differ (see results.json)."
    beaten = [k.split("-")[1] for k in needed if diffs[k]["as_used"]["ci95"][1] < 0]
    worse = [k.split("-")[1] for k in needed if diffs[k]["as_used"]["ci95"][0] > 0]
    rivals = ", ".join(k.split("-")[1] for k in needed)
    missing = [k.split("-")[1] for k in ("ra3-ntp", "ra3-shuffled", "ra3-null") if k not in diffs]
    caveat = f" (not compared: {', '.join(missing)}; without both controls this is no verdict on RA3)" if missing else ""
    if len(beaten) == len(needed):
        return (f"Yes: on held-out code RA3 (thinking) had a lower code CE than {rivals}, every 95% interval "
                f"of the paired difference below zero{caveat}.")
    parts = []
    if beaten:
        parts.append(f"it beat {', '.join(beaten)}")
    if worse:
        parts.append(f"it was worse than {', '.join(worse)}")
    tied = [r for r in (k.split("-")[1] for k in needed) if r not in beaten and r not in worse]
    if tied:
        parts.append(f"its difference from {', '.join(tied)} is within noise (the 95% interval holds zero)")
    return f"No: on held-out code RA3 (thinking) did not beat all of {rivals}: " + "; ".join(parts) + caveat + "."


def write_report(cfg: CompareConfig, state: dict[str, Any], arms: list[str]) -> dict[str, Any]:
    out = Path(cfg.out)
    measures = {arm: _load(out, arm, "measure.json") for arm in ["base", *arms]}
    trains = {arm: _load(out, arm, "train.json") for arm in arms}
    results: dict[str, Any] = {
        "config": {k: v for k, v in cfg.identity().items()},
        "heldout_snippets": len(measures["base"]["heldout"]["nll"]),
        "heldout_files": len(set(_files(measures["base"]))),
        "arms": {arm: arm_summary(arm, measures[arm], trains.get(arm, {}), cfg, cfg.seed) for arm in ["base", *arms]},
        "diffs": {},
        "seconds": state.get("seconds", {}),
    }
    pairs = list(PAIRS) + [(a, "ntp") for a in arms if a.startswith("ra3_c")]
    for a, b in pairs:
        if a in measures and b in measures and measures[a] and measures[b]:
            results["diffs"][f"{a}-{b}"] = diff(measures[a], measures[b], cfg, cfg.seed)
    results["verdict"] = verdict(results["diffs"])
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    plots = _plots(out, results)
    _tensorboard(out, results)
    atomic_write_text(out / "report.md", render_markdown(results, plots))
    return results


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, dict) and "mean" in x:
        return f"{x['mean']:.{digits}f} [{x['ci95'][0]:.{digits}f}, {x['ci95'][1]:.{digits}f}]"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _changed_mstep(mstep: dict[str, Any]) -> str:
    """The M-step fields the run set away from their defaults, as key=value."""
    from ra3_megatron.megatron.trainer import MSTEP_PATHS, MStepConfig

    default = dataclasses.asdict(MStepConfig())
    changed = [f"{k}={v}" for k, v in mstep.items() if k not in MSTEP_PATHS and default.get(k) != v]
    return " ".join(changed) or "(defaults)"


def render_markdown(results: dict[str, Any], plots: list[str]) -> str:
    cfg = results["config"]
    lines = ["# RA3 vs NTP on held-out code", "",
             f"Base model `{cfg['model']}`; training input `{cfg['input']}`; held-out `{cfg['heldout']}` "
             f"({results['heldout_snippets']} snippets). Penalty c = {cfg['estep']['penalty']}, "
             f"{cfg['iterations']} EM round(s); M-step options: {_changed_mstep(cfg['mstep'])}.", "",
             f"**Verdict.** {results['verdict']}", "",
             "## Arms", "",
             f"Code CE in nats per code token, with bootstrap 95% intervals over held-out files "
             f"({results['heldout_files']} files). "
             "(a) teacher-forced without thoughts; (b) the model writes its own thoughts (q(#) decides "
             "at each candidate line; mean over samples); (c) the training split, thoughts as trained.", "",
             "| arm | M-step steps | code tokens trained | (a) held-out CE | (b) held-out CE, thinking | "
             "think rate: inference / infused | (c) train CE | pass@1 |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        rate = (f"{r['think_rate']:.3f} / {r.get('infused_think_rate', float('nan')):.3f}"
                if "think_rate" in r else "-")
        pass1 = ", ".join(f"{k} {v:.3f}" for k, v in (r.get("pass1") or {}).items() if v is not None) or "-"
        code = f"{r['code_tokens']:,.0f}" if r.get("code_tokens") else "-"
        lines.append(f"| {arm} | {_fmt(r.get('steps'))} | {code} | {_fmt(r['heldout_ce'])} | "
                     f"{_fmt(r.get('heldout_ce_thinking'))} | {rate} | {_fmt(r.get('train_ce'))} | {pass1} |")
    lines += ["", "## Paired differences (a - b on the same code tokens; negative: a predicts code better; "
              "95% intervals resample held-out files)", "",
              "| a - b | (a) plain CE | as used | share of files a better (plain) | pass@1 |", "|---|---|---|---|---|"]
    for name, d in results["diffs"].items():
        pass1 = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in (d.get("pass1") or {}).items()) or "-"
        lines.append(f"| {name} | {_fmt(d)} | {_fmt(d['as_used'])} | {d['share_a_better']:.2f} | {pass1} |")
    ablation = [a for a in results["arms"] if a == "ra3" or a.startswith("ra3_c")]
    if len(ablation) > 1:
        lines += ["", "## The penalty c", "", "| arm | c | think rate infused / inference | thought tokens | "
                  "mean q(#) | (b) held-out CE, thinking |", "|---|---|---|---|---|---|"]
        for a in ablation:
            r = results["arms"][a]
            c = cfg["estep"]["penalty"] if a == "ra3" else float(a[len("ra3_c"):])
            lines.append(f"| {a} | {c:g} | {r.get('infused_think_rate', float('nan')):.3f} / {r['think_rate']:.3f} | "
                         f"{r['mean_thought_tokens']:.1f} | {r['mean_q_think']:.4f} | {_fmt(r.get('heldout_ce_thinking'))} |")
    lines += ["", *[f"![{p}]({p})" for p in plots], "",
              "Files: results.json (every figure), arms/*/measure.json (per snippet and task), tb/ (TensorBoard)."]
    return "\n".join(lines) + "\n"


def _plots(out: Path, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    arms = list(results["arms"])
    fig, ax = plt.subplots(figsize=(1.6 * len(arms) + 2, 3.6))
    for k, (key, label) in enumerate((("heldout_ce", "(a) plain"), ("heldout_ce_thinking", "(b) thinking"))):
        xs, ys, err = [], [], []
        for i, arm in enumerate(arms):
            v = results["arms"][arm].get(key)
            if v:
                xs.append(i + 0.2 * (2 * k - 1))
                ys.append(v["mean"])
                err.append([[v["mean"] - v["ci95"][0]], [v["ci95"][1] - v["mean"]]])
        if xs:
            ax.errorbar(xs, ys, yerr=[[e[0][0] for e in err], [e[1][0] for e in err]], fmt="o", capsize=4, label=label)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("held-out code CE (nats/token)")
    ax.legend()
    ax.set_title("Held-out code CE per arm (95% intervals)")
    fig.tight_layout()
    fig.savefig(out / "heldout_ce.png", dpi=110)
    plt.close(fig)
    names.append("heldout_ce.png")
    if results["diffs"]:
        pairs = list(results["diffs"])
        fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(pairs) + 1.5))
        for k, (key, label) in enumerate(((None, "(a) plain"), ("as_used", "as used"))):
            for i, p in enumerate(pairs):
                d = results["diffs"][p] if key is None else results["diffs"][p][key]
                y = i + 0.15 * (2 * k - 1)
                ax.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]], fmt="o",
                            capsize=4, color=f"C{k}", label=label if i == 0 else None)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(range(len(pairs)), pairs)
        ax.set_xlabel("paired CE difference a - b (nats/token); < 0: a better")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "diffs.png", dpi=110)
        plt.close(fig)
        names.append("diffs.png")
    return names


def _tensorboard(out: Path, results: dict[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    try:
        for arm, r in results["arms"].items():
            for key in ("heldout_ce", "heldout_ce_thinking"):
                if r.get(key):
                    writer.add_scalar(f"compare/{arm}/{key}", r[key]["mean"], 0)
            for key in ("think_rate", "train_ce", "mean_q_think"):
                if r.get(key) is not None:
                    writer.add_scalar(f"compare/{arm}/{key}", r[key], 0)
        for name, d in results["diffs"].items():
            writer.add_scalar(f"compare/diff/{name}", d["mean"], 0)
            writer.add_scalar(f"compare/diff/{name}/as_used", d["as_used"]["mean"], 0)
    finally:
        writer.close()
