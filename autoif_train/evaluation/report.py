"""Evaluation outputs: `results.json` (merged across runs), a markdown table and a PNG bar chart per output folder.

`results.json` maps model -> benchmark -> metrics (fractions in [0, 1]); a later run into the same folder adds or
replaces models and keeps the others, so checkpoints evaluated one at a time still end up side by side. Files are
written through `core.io` (temporary name, fsync, rename), so an interrupted write never leaves a truncated results file.
Not protected against: two processes writing the same folder at once (the last writer wins).
"""

from __future__ import annotations

from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import atomic_path, read_json, write_json, write_text

# (benchmark, metric) columns shown in tables and charts, in order; other keys stay in results.json only.
HEADLINE = {
    "ifeval": ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"),
    "ifbench": ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"),
    "verifiers": ("pass_rate", "all_pass"),
}


def load_results(out_dir: str | Path) -> dict:
    """The results of earlier runs in `out_dir` ({} when none); a broken file is an `InputError` naming it."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except InputError as err:
        raise InputError(path, err.line, None, f"{err.message}; move it away to start over") from err
    if not isinstance(data, dict):
        raise InputError(path, None, None, "expected an object mapping model -> benchmark -> metrics; move it away "
                                           "to start over")
    return data


def columns(results: dict) -> list[tuple[str, str]]:
    """Headline (benchmark, metric) pairs present for at least one model."""
    present = {(b, m) for per_model in results.values() for b, metrics in per_model.items() for m in metrics}
    return [(b, m) for b, metrics in HEADLINE.items() for m in metrics if (b, m) in present]


def markdown_table(results: dict) -> str:
    """One row per model, one column per headline metric, values in percent (blank where not evaluated)."""
    cols = columns(results)
    header = "| model | " + " | ".join(f"{b} {m}" for b, m in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    lines = [header, rule]
    for model, per_model in results.items():
        cells = []
        for b, m in cols:
            value = per_model.get(b, {}).get(m)
            cells.append("" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: str | Path, title: str = "Instruction following (%)") -> Path:
    """Grouped bars: one group per headline metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(results)
    models = list(results)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) + 2), 4.5))
    for i, model in enumerate(models):
        values = [100 * results[model].get(b, {}).get(m, float("nan")) for b, m in cols]
        xs = [c + (i - (len(models) - 1) / 2) * width for c in range(len(cols))]
        ax.bar(xs, values, width=width, label=model)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{b}\n{m}" for b, m in cols], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, new_results: dict) -> dict:
    """Merge `new_results` into `out_dir/results.json`, then rewrite `results.md` and `results.png`; return all."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = load_results(out)
    for model, per_model in new_results.items():
        merged.setdefault(model, {}).update(per_model)
    write_json(out / "results.json", merged)
    write_text(out / "results.md", markdown_table(merged))
    if columns(merged):
        bar_chart(merged, out / "results.png")
    return merged
