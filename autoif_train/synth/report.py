"""`report.json` and the printed table: per stage rows in, candidates, rows out, drops by reason, seconds."""

from __future__ import annotations

from autoif_train.core.io import write_json
from autoif_train.synth.artifacts import RunFolder


def build_report(run: RunFolder) -> dict:
    from autoif_train.synth.pipeline import STAGES

    stages = {}
    for name in STAGES:
        info = run.manifest["stages"].get(name)
        if not info:
            continue
        keys = ("status", "rows_in", "candidates", "rows_out", "drops", "details", "seconds")
        stages[name] = {k: info[k] for k in keys if k in info}
        if info.get("status") != "done":
            stages[name]["chunks_done"] = info.get("chunks_done", 0)
            stages[name]["chunks_total"] = info.get("chunks_total")
    return {"run": str(run.root), "stages": stages}


def format_report(report: dict) -> str:
    header = f"{'stage':<22}{'status':<9}{'in':>8}{'candidates':>12}{'out':>8}{'seconds':>9}  drops by reason"
    lines = [header, "-" * len(header)]
    for name, s in report["stages"].items():
        drops = ", ".join(f"{k}={v}" for k, v in sorted(s.get("drops", {}).items())) or "-"
        lines.append(
            f"{name:<22}{s.get('status', '?'):<9}{s.get('rows_in', ''):>8}{s.get('candidates', ''):>12}"
            f"{s.get('rows_out', ''):>8}{s.get('seconds', ''):>9}  {drops}"
        )
        if s.get("details"):
            lines.append(" " * 24 + "details: " + ", ".join(f"{k}={v}" for k, v in sorted(s["details"].items())))
    return "\n".join(lines)


def write_report(run: RunFolder) -> dict:
    """Write `DIR/report.json` from the manifest, print the table, and return the report."""
    report = build_report(run)
    write_json(run.root / "report.json", report)
    print(format_report(report))
    return report
