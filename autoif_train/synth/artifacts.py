"""The run folder: JSONL artifacts written atomically, a manifest of finished stages and chunks, resume.

Layout of `DIR`:
    manifest.json               config, and per stage: status, chunk progress, counts
    stages/<stage>.jsonl        a finished stage's rows
    stages/<stage>.parts/       chunk files of the stage in progress (NNNNN.jsonl, then NNNNN.meta.json)
    report.json                 per stage rows in/out and drops by reason
    sft.jsonl, sft_alpaca.json, dpo.jsonl, online_dpo_prompts.jsonl   the exported data

Every file is written through `core.io` (a temporary sibling, fsync, rename), so a kill leaves either the old
file or the new one. A chunk counts as done only when its `.meta.json` exists (written after its rows), so a kill mid-chunk
redoes that chunk and never duplicates rows. Not protected against: two processes writing the same run folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import Row, read_rows, write_json, write_jsonl


class SynthError(InputError):
    """Bad input to the synthesis pipeline (names the file, line and field); finished work is kept."""


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[Row]:
    """Rows of a local JSONL file; a bad line or a missing required field raises `SynthError` naming file, line
    and field."""
    return read_rows(Path(path), fields=dict.fromkeys(required, object), error=SynthError)


class RunFolder:
    """One synthesis run's folder and manifest."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / "manifest.json"
        if self.manifest_path.exists():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise SynthError(self.manifest_path, err.lineno, None,
                                 f"corrupt manifest ({err.msg}); delete it to start over") from err
        else:
            self.manifest = {"config": None, "stages": {}}

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)

    def stage_path(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.jsonl"

    def parts_dir(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.parts"

    def stage_info(self, stage: str) -> dict:
        return self.manifest["stages"].setdefault(stage, {"status": "pending"})

    def is_done(self, stage: str) -> bool:
        return self.stage_info(stage).get("status") == "done" and self.stage_path(stage).exists()

    def read_stage(self, stage: str) -> list[dict]:
        if not self.is_done(stage):
            raise SynthError(f"stage {stage!r} has not finished in {self.root}; run it first")
        return read_jsonl(self.stage_path(stage))

    def reset(self, stage: str) -> None:
        """Forget a stage: its artifact, chunk files and manifest entry."""
        self.stage_path(stage).unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir(stage), ignore_errors=True)
        self.manifest["stages"].pop(stage, None)
        self.save()

    # chunks -------------------------------------------------------------------------------------------------
    def chunk_done(self, stage: str, index: int) -> dict | None:
        meta = self.parts_dir(stage) / f"{index:05d}.meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None

    def write_chunk(self, stage: str, index: int, rows: list[dict], meta: dict) -> None:
        parts = self.parts_dir(stage)
        write_jsonl(parts / f"{index:05d}.jsonl", rows)
        write_json(parts / f"{index:05d}.meta.json", {**meta, "rows_out": len(rows)})
        info = self.stage_info(stage)
        info["chunks_done"] = sum(1 for _ in parts.glob("*.meta.json"))
        self.save()

    def read_chunk(self, stage: str, index: int) -> list[dict]:
        return read_jsonl(self.parts_dir(stage) / f"{index:05d}.jsonl")

    def finish_stage(self, stage: str, rows: list[dict], stats: dict) -> None:
        write_jsonl(self.stage_path(stage), rows)
        self.manifest["stages"][stage] = {**stats, "status": "done", "rows_out": len(rows)}
        self.save()
        shutil.rmtree(self.parts_dir(stage), ignore_errors=True)
