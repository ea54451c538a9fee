"""Evaluation outputs: `results.json` (merged across runs), a markdown table and a PNG bar chart per output folder.

`results.json` maps model -> benchmark -> metrics (fractions in [0, 1]) plus that result's `settings` (prompts
scored, limit, max_new_tokens, backend, a hash of the prompts, a fingerprint of the model). A later run into the
same folder adds or replaces models and keeps the others, so checkpoints evaluated one at a time still end up side by
side, but only when its settings for a benchmark equal those already there (`check_compatible`, before any
generation): numbers measured differently never share a table. Files are written through `core.io` (temporary name,
fsync, rename), so an interrupted write never leaves a truncated results file. Not protected against: two processes
writing the same folder at once (the last writer wins); the model fingerprint reads the config and the first and
last MiB of each weight file, not every byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import atomic_path, read_json, write_json, write_text

# settings that must match for two results of one benchmark to share a table (the model fingerprint may differ)
COMPARED = ("prompts", "limit", "max_new_tokens", "backend", "data_sha256")

# (benchmark, metric) columns shown in tables and charts, in order; other keys stay in results.json only.
HEADLINE = {
    "ifeval": ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"),
    "ifbench": ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"),
    "verifiers": ("pass_rate", "all_pass"),
}


def data_hash(prompts: list) -> str:
    """sha256 of the benchmark's prompts as scored (order included)."""
    return hashlib.sha256(json.dumps(prompts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def model_fingerprint(path: str) -> str:
    """sha256 over a local model folder's config.json and, per weight file, its name, size and first and last MiB;
    for a hub id, the id itself (no download)."""
    folder = Path(path)
    if not folder.is_dir():
        return hashlib.sha256(f"hub:{path}".encode()).hexdigest()
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt"):
            size = f.stat().st_size
            digest.update(f"{f.name}:{size}".encode())
            with f.open("rb") as handle:
                digest.update(handle.read(2**20))
                if size > 2**21:
                    handle.seek(-(2**20), 2)
                    digest.update(handle.read())
    return digest.hexdigest()


def check_compatible(out_dir: str | Path, benchmark: str, settings: dict) -> None:
    """Raise `InputError` naming results.json when a result of `benchmark` there was measured with other settings."""
    results = load_results(out_dir)
    for model, per_model in results.items():
        if benchmark not in per_model:
            continue
        old = per_model[benchmark].get("settings")
        if old is None:
            raise InputError(Path(out_dir) / "results.json", None, f"{model}.{benchmark}.settings",
                             "missing (written before results carried their settings); use a new --output_dir")
        differ = [f"{k} {old.get(k)!r} there, {settings.get(k)!r} now" for k in COMPARED if old.get(k) != settings.get(k)]
        if differ:
            raise InputError(Path(out_dir) / "results.json", None, f"{model}.{benchmark}.settings",
                             f"measured with other settings ({'; '.join(differ)}); use a new --output_dir or the "
                             "same settings")


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
    for bench in dict.fromkeys(b for b, _ in cols):  # how each benchmark was measured
        first = next((per[bench]["settings"] for per in results.values() if "settings" in per.get(bench, {})), None)
        if first:
            lines.append(f"\n{bench}: n={first['prompts']}, limit {first['limit']}, max_new_tokens "
                         f"{first['max_new_tokens']}, backend {first['backend']}, data sha256 {first['data_sha256'][:12]}")
    return "\n".join(lines) + "\n"


def prompt_counts(results: dict, benchmark: str) -> str:
    """The number of prompts `benchmark` was scored on ("?" for results without settings)."""
    counts = {str(per.get(benchmark, {}).get("settings", {}).get("prompts", "?")) for per in results.values()
              if benchmark in per}
    return "/".join(sorted(counts))


def tick_labels(results: dict) -> list[str]:
    """One label per headline column: benchmark, metric and n."""
    return [f"{b}\n{m}\nn={prompt_counts(results, b)}" for b, m in columns(results)]


def bar_chart(results: dict, path: str | Path, title: str = "Instruction following (%)") -> Path:
    """Grouped bars: one group per headline metric, one bar per model, each bar labelled with its value; every
    group names the number of prompts it was scored on."""
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
        bars = ax.bar(xs, values, width=width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(tick_labels(results), fontsize=8)
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
