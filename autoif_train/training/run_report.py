"""What a finished (or running) online-DPO or GRPO run did, from its own logs: plots and a markdown summary.

Sources, both written by the trainers into `output_dir`:
    rounds.jsonl      online DPO: one record per complete round (`training.rounds.RoundStore`)
    train_log.jsonl   GRPO: the trainer's log history, one record per logged step (`training.grpo.run_grpo`)
`history(run_dir)` reads whichever is there; `write_run_report` draws one PNG per panel group into `report/` and
`report.md` beside them. It only arranges logged numbers; a value that was not logged is left out, never filled in.
A quickstart folder (with `report.json`) adds its held-out before/after to the summary. Not protected against: a
run folder being written while it is read (the newest round may then be missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import atomic_path, read_json, read_rows, write_text

# (panel title, [(key, label)], y label): online-DPO rounds
ROUND_PANELS = [
    ("pass rate per round", [("mean_pass_rate", "sampled (training prompts)"),
                             ("heldout_pass_rate", "held-out (greedy)")], "pass rate"),
    ("pairs per round", [("pairs", "pairs"), ("prompts_with_pair", "prompts with a pair")], "count"),
    ("completion length", [("mean_completion_tokens", "mean tokens per sample")], "tokens"),
    ("truncation and end of turn", [("clipped_ratio", "cut at max_new_tokens"), ("eos_share", "ended its turn"),
                                    ("unscored_share", "unscored")], "share of samples"),
    ("DPO loss and margins", [("dpo_loss", "loss"), ("rewards_margins", "reward margin"),
                              ("rewards_accuracies", "reward accuracy")], "value"),
]
# GRPO steps (TRL's logged names)
STEP_PANELS = [
    ("reward per step", [("reward", "mean reward (pass rate)"), ("reward_std", "reward std")], "reward"),
    ("completion length", [("completions/mean_length", "mean tokens")], "tokens"),
    ("truncation", [("completions/clipped_ratio", "cut at max_completion_length"),
                    ("frac_reward_zero_std", "groups with no reward spread")], "share"),
    ("loss", [("loss", "GRPO loss")], "value"),
]


class RunReportError(InputError):
    """The folder holds no run log to report on."""


@dataclass
class History:
    """A run's logged series: `kind` is "rounds" (x = round) or "steps" (x = optimizer step)."""

    kind: str
    source: Path
    records: list[dict] = field(default_factory=list)

    @property
    def x_key(self) -> str:
        return "round" if self.kind == "rounds" else "step"

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(x, y) of every record that logged `key` as a finite number."""
        xs, ys = [], []
        for rec in self.records:
            value = rec.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                xs.append(rec[self.x_key])
                ys.append(float(value))
        return xs, ys


def find_training_dir(run_dir: Path) -> Path:
    """`run_dir` itself when it holds a run log, else the one sub-folder that does (a quickstart folder)."""
    if (run_dir / "rounds.jsonl").is_file() or (run_dir / "train_log.jsonl").is_file():
        return run_dir
    found = sorted(p.parent for name in ("rounds.jsonl", "train_log.jsonl") for p in run_dir.glob(f"*/{name}"))
    if len(found) == 1:
        return found[0]
    what = "several runs: " + ", ".join(map(str, found)) if found else "no rounds.jsonl or train_log.jsonl"
    raise RunReportError(run_dir, None, None, f"{what}; give the training output_dir")


def history(run_dir: str | Path) -> History:
    """The logged series of the run in `run_dir` (or its one training sub-folder)."""
    folder = find_training_dir(Path(run_dir))
    if (folder / "rounds.jsonl").is_file():
        path = folder / "rounds.jsonl"
        return History("rounds", path, [dict(r) for r in read_rows(path, fields={"round": int})])
    path = folder / "train_log.jsonl"
    rows = [dict(r) for r in read_rows(path) if "step" in r and "train_runtime" not in r]
    return History("steps", path, rows)


def plot(hist: History, out_dir: Path) -> list[Path]:
    """One PNG per panel with data; every point is a logged value, labelled with its series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for title, keys, ylabel in ROUND_PANELS if hist.kind == "rounds" else STEP_PANELS:
        lines = [(label, *hist.series(key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for label, xs, ys in lines:
            ax.plot(xs, ys, "o-" if hist.kind == "rounds" else "-", label=label, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("online DPO round" if hist.kind == "rounds" else "optimizer step")
        ax.set_ylabel(ylabel)
        if hist.kind == "rounds":
            ax.set_xticks(sorted({x for _, xs, _ in lines for x in xs}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / (title.replace(" ", "_") + ".png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def markdown(hist: History, plots: list[Path], quickstart: dict | None = None) -> str:
    """The summary: held-out before/after (quickstart folders), then one table row per round or per logged step
    (GRPO: first, last and every tenth), then the plots."""
    lines = [f"# Run report: {hist.source.parent}", "", f"Source: `{hist.source}` ({len(hist.records)} "
             f"{'rounds' if hist.kind == 'rounds' else 'logged steps'})", ""]
    if quickstart:
        from autoif_train.quickstart_report import HELD_OUT_SETS

        sets = [(k, label) for k, label in HELD_OUT_SETS if k in quickstart]
        n_in = quickstart.get("settings", {}).get("heldout_prompts", "?")
        ns = [quickstart[k]["after"].get("num_prompts", n_in) for k, _ in sets]
        lines += ["## Held-out verifier pass rate (greedy)", "",
                  "| | " + " | ".join(f"{label} (n={n})" for (_, label), n in zip(sets, ns)) + " |",
                  "|---|" + "---|" * len(sets)]
        for phase in ("before", "after"):
            lines.append(f"| {phase} | " + " | ".join(f"{100 * quickstart[k][phase]['pass_rate']:.1f}%"
                                                      for k, _ in sets) + " |")
        lines += ["| change | " + " | ".join(f"{100 * quickstart[k]['delta_pass_rate']:+.1f} points"
                                             for k, _ in sets) + " |", ""]
    panels = ROUND_PANELS if hist.kind == "rounds" else STEP_PANELS
    keys = [(k, label) for _, group, _ in panels for k, label in group
            if any(k in rec for rec in hist.records)]
    rows = hist.records
    if hist.kind == "steps" and len(rows) > 12:
        rows = [r for i, r in enumerate(rows) if i == 0 or i == len(rows) - 1 or (i + 1) % 10 == 0]
    lines += [f"## {'Rounds' if hist.kind == 'rounds' else 'Steps'}", "",
              "| " + " | ".join([hist.x_key] + [label for _, label in keys]) + " |",
              "|" + "---|" * (len(keys) + 1)]
    for rec in rows:
        lines.append("| " + " | ".join([str(rec.get(hist.x_key))] + [_fmt(rec.get(k)) for k, _ in keys]) + " |")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.parent.name}/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write `report.md` and `report/*.png` for the run in `run_dir` into `out_dir` (default `run_dir`)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    hist = history(run_dir)
    if not hist.records:
        raise RunReportError(hist.source, None, None, "no complete round or logged step yet")
    png_dir = out / "report"
    png_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(hist, png_dir)
    quickstart = None
    if (run_dir / "report.json").is_file():
        quickstart = read_json(run_dir / "report.json")
    path = out / "report.md"
    write_text(path, markdown(hist, plots, quickstart))
    return path
