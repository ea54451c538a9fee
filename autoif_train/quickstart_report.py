"""The quickstart's outputs: `report.json`, `pass_rate.png` and the before/after table printed with rich.

`build_report` only arranges numbers that were measured elsewhere (held-out evaluation records and the online-DPO
round records); it computes per-category means but never invents or smooths a value. `check_report` is the schema
the smoke test and users can rely on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from autoif_train.core.io import atomic_path

ROUND_KEYS = (
    "round", "prompts", "prompts_with_pair", "pairs", "mean_pass_rate", "dpo_loss", "rewards_margins",
    "rewards_accuracies", "generation_seconds", "scoring_seconds", "training_seconds", "train_steps",
    "mean_completion_tokens", "clipped_ratio", "eos_share", "unscored_share",
)


def by_group(records: list[dict], key: str) -> dict[str, float]:
    """Mean pass rate of held-out records grouped by `key` (e.g. `category`, `instruction_id`)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        groups[str(rec.get(key, "?"))].append(rec["pass_rate"])
    return {name: sum(v) / len(v) for name, v in sorted(groups.items())}


def subset(result: tuple[dict, list[dict]], ids: list[str]) -> tuple[dict, list[dict]]:
    """The (metrics, records) of the prompts `ids` within one scored evaluation (pass rate, all_pass, counts)."""
    from autoif_train.evaluation.verifier_pass_rate import verifier_metrics

    wanted = set(ids)
    records = [r for r in result[1] if r["id"] in wanted]
    if len(records) != len(wanted):
        raise ValueError(f"{len(wanted) - len(records)} of the {len(wanted)} prompts are missing from the evaluation")
    return verifier_metrics(records), records


def held_out_section(before: tuple[dict, list[dict]], after: tuple[dict, list[dict]]) -> dict:
    """Before/after pass rates (fractions), per category, the change, and per instruction."""
    (m_before, r_before), (m_after, r_after) = before, after
    return {
        "before": {**m_before, "by_category": by_group(r_before, "category")},
        "after": {**m_after, "by_category": by_group(r_after, "category")},
        "delta_pass_rate": m_after["pass_rate"] - m_before["pass_rate"],
        "by_instruction": {
            name: {"before": b, "after": by_group(r_after, "instruction_id").get(name)}
            for name, b in by_group(r_before, "instruction_id").items()
        },
    }


def build_report(before: tuple[dict, list[dict]], after: tuple[dict, list[dict]], rounds: list[dict],
                 settings: dict, timings: dict, ood: tuple[tuple, tuple] | None = None) -> dict:
    """The `report.json` document: held-out before/after (`held_out`: trained instruction types, unseen queries;
    `held_out_ood`, when `ood` = (before, after) is given: instruction types never trained on), one entry per
    round, settings and timings."""
    report = {"held_out": held_out_section(before, after)}
    if ood:
        report["held_out_ood"] = held_out_section(*ood)
    report.update({
        "rounds": [{k: rec.get(k) for k in ROUND_KEYS if k in rec} for rec in rounds],
        "settings": settings,
        "timings_seconds": timings,
    })
    return report


HELD_OUT_SETS = (("held_out", "in distribution"), ("held_out_ood", "out of distribution"))


BENCHMARK_METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def benchmark_deltas(before: dict, after: dict) -> dict:
    """Per benchmark: the metrics before and after, and the 4-metric mean (IFEval's usual summary) of each."""
    out = {}
    for name, b in before.items():
        a = after.get(name, {})
        entry = {"before": b, "after": a}
        if all(k in b and k in a for k in BENCHMARK_METRICS):
            entry["mean4_before"] = sum(b[k] for k in BENCHMARK_METRICS) / 4
            entry["mean4_after"] = sum(a[k] for k in BENCHMARK_METRICS) / 4
            entry["delta_mean4"] = entry["mean4_after"] - entry["mean4_before"]
        out[name] = entry
    return out


def check_report(report: dict) -> None:
    """Raise `ValueError` naming the first missing or malformed field of a quickstart report."""
    for key, _ in HELD_OUT_SETS:
        if key == "held_out_ood" and key not in report:
            continue
        for phase in ("before", "after"):
            value = report.get(key, {}).get(phase, {}).get("pass_rate")
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
                raise ValueError(f"report.json: {key}.{phase}.pass_rate must be a fraction in [0, 1], got {value!r}")
    rounds = report.get("rounds")
    if not isinstance(rounds, list):
        raise ValueError("report.json: 'rounds' must be a list of per-round metrics")
    for i, rec in enumerate(rounds):
        if not isinstance(rec, dict) or rec.get("round") != i or "mean_pass_rate" not in rec:
            raise ValueError(f"report.json: rounds[{i}] must be a dict with 'round' == {i} and 'mean_pass_rate'")


def plot_pass_rate(report: dict, path: Path) -> None:
    """Line plot: on-policy sample pass rate of each round's training prompts (drawn at x = round, i.e. by the
    policy after that many rounds of updates), and the held-out greedy pass rate before training and after the
    last round (x = number of rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    n = len(rounds)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if rounds:
        ax.plot([r["round"] for r in rounds], [100 * r["mean_pass_rate"] for r in rounds], "o-",
                label="training prompts: sampled responses")
    end = max(n, 1)  # GRPO logs steps, not rounds: before at 0, after at 1
    for (key, label), color, marker in zip(HELD_OUT_SETS, ("C3", "C2"), ("s--", "^:")):
        if key not in report:
            continue
        held = report[key]
        ax.plot([0, end], [100 * held["before"]["pass_rate"], 100 * held["after"]["pass_rate"]], marker, color=color,
                label=f"held-out prompts, {label}: greedy (n={held['after'].get('num_prompts', '?')})")
        for x, phase in ((0, "before"), (end, "after")):
            value = 100 * held[phase]["pass_rate"]
            ax.annotate(f"{value:.1f}%", (x, value), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8, color=color)
    stage = report.get("settings", {}).get("stage", "online_dpo")
    ax.set_xlabel("online DPO rounds completed" if stage == "online_dpo" else f"{stage}: before / after training")
    ax.set_ylabel("verifier pass rate (%)")
    ax.set_xticks(range(0, end + 1))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("AutoIF quickstart: verifier pass rate")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def print_summary(report: dict, console=None) -> None:
    """Before/after table per category plus the overall row, and a per-round table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for key, label in HELD_OUT_SETS:
        if key not in report:
            continue
        held = report[key]
        table = Table(title=f"Held-out verifier pass rate (greedy), {label}, n={held['after'].get('num_prompts', '?')}")
        table.add_column("category")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        table.add_column("change", justify="right")
        for cat, b in held["before"]["by_category"].items():
            a = held["after"]["by_category"].get(cat, float("nan"))
            table.add_row(cat, f"{100 * b:.1f}%", f"{100 * a:.1f}%", f"{100 * (a - b):+.1f}")
        b, a = held["before"]["pass_rate"], held["after"]["pass_rate"]
        table.add_row("[bold]all[/bold]", f"[bold]{100 * b:.1f}%", f"[bold]{100 * a:.1f}%",
                      f"[bold]{100 * (a - b):+.1f}")
        console.print(table)
    if report["rounds"]:
        rt = Table(title="Online DPO rounds")
        for col in ("round", "sample pass rate", "prompts with pair", "pairs", "dpo loss", "seconds"):
            rt.add_column(col, justify="right")
        for r in report["rounds"]:
            secs = sum(r.get(k) or 0 for k in ("generation_seconds", "scoring_seconds", "training_seconds"))
            loss = r.get("dpo_loss")
            rt.add_row(str(r["round"]), f"{100 * r['mean_pass_rate']:.1f}%",
                       f"{r.get('prompts_with_pair', 0)}/{r.get('prompts', 0)}", str(r.get("pairs", 0)),
                       "-" if loss is None else f"{loss:.4f}", f"{secs:.0f}")
        console.print(rt)
    if report.get("benchmarks"):
        bt = Table(title="Benchmarks before / after (greedy)")
        for col in ("benchmark", "n", *BENCHMARK_METRICS, "4-metric mean", "mean words"):
            bt.add_column(col, justify="right")
        for name, entry in report["benchmarks"].items():
            n = entry["after"].get("num_prompts", "?")
            cells = [f"{100 * entry['before'].get(k, float('nan')):.1f} -> {100 * entry['after'].get(k, float('nan')):.1f}"
                     for k in BENCHMARK_METRICS]
            mean = (f"{100 * entry['mean4_before']:.1f} -> {100 * entry['mean4_after']:.1f} "
                    f"({100 * entry['delta_mean4']:+.1f})") if "delta_mean4" in entry else "-"
            words = [entry[p].get("mean_response_words") for p in ("before", "after")]
            bt.add_row(name, str(n), *cells, mean,
                       "-" if None in words else f"{words[0]:.0f} -> {words[1]:.0f}")
        console.print(bt)
