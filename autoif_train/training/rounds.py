"""Durable per-round state of online DPO under `output_dir/rounds/round_XXXX/`, and the `rounds.jsonl` log.

A round is produced chunk by chunk (`rollout_chunk_prompts` prompts each) and then planned:
    chunks/NNNNN.samples.jsonl  one record per sample (prompt index and id, sample index, text, completion ids,
                                finish reason, token count), written after the chunk is sampled
    chunks/NNNNN.scores.jsonl   per sample: each verifier's result and the pass rate (None when unscored)
    chunks/NNNNN.meta.json      the chunk's sampling / scoring seconds
    samples.jsonl, scores.jsonl the round's records, once all its chunks are done
    pairs.jsonl + plan.json     the pairs, and the plan: prompts used, pair counts, start step and steps to train
    reference.jsonl             per distinct (prompt, sample) sequence of the pairs: its reference log-prob and
                                scored token count (`training.reference`; with `dedupe_sequences`)
    complete.json               metrics and the round-end checkpoint; written before the held-out evaluation,
                                whose result is merged in afterwards (`heldout.jsonl`)
Every file is written whole (fsync) and renamed into place, so a kill leaves the old state or the new one and
loses at most the chunk in flight. Only the main process writes. Not protected against: two runs sharing a folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import read_rows, write_jsonl, write_text


def checkpoint_step(path: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m and (path / "trainer_state.json").is_file() else None


class RoundStateError(InputError):
    """A saved round does not match the run being resumed (different prompts, edited files)."""


class RoundStore:
    """Reads and writes one run's round folders; the round index is 0-based, folders are `round_0000`, ..."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / "rounds"
        self.log_path = self.output_dir / "rounds.jsonl"

    def round_dir(self, r: int, create: bool = False) -> Path:
        path = self.root / f"round_{r:04d}"
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    # chunks ----------------------------------------------------------------------------------------------
    def _chunk(self, r: int, c: int, kind: str, create: bool = False) -> Path:
        folder = self.round_dir(r, create) / "chunks"
        if create:
            folder.mkdir(exist_ok=True)
        return folder / f"{c:05d}.{kind}"

    def save_chunk(self, r: int, c: int, kind: str, rows: list[dict], seconds: float) -> None:
        """`kind` is "samples" or "scores"; the rows first, then the timing (its key marks the kind done)."""
        write_jsonl(self._chunk(r, c, f"{kind}.jsonl", create=True), rows)
        meta_path = self._chunk(r, c, "meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta[f"{kind}_seconds"] = seconds
        write_text(meta_path, json.dumps(meta))

    def load_chunk(self, r: int, c: int, kind: str, prompt_ids: list[str], num_samples: int) -> list[dict] | None:
        meta_path = self._chunk(r, c, "meta.json")
        if not meta_path.is_file() or f"{kind}_seconds" not in json.loads(meta_path.read_text()):
            return None
        rows = read_rows(self._chunk(r, c, f"{kind}.jsonl"))
        saved = [row["prompt_id"] for row in rows]
        if saved != [pid for pid in prompt_ids for _ in range(num_samples)]:
            raise RoundStateError(
                f"{self._chunk(r, c, kind + '.jsonl')}: saved for prompts {sorted(set(saved))[:3]}... x {len(saved)} "
                f"samples but this run's round {r} chunk {c} has {prompt_ids[:3]}... x {num_samples}; the dataset, "
                "seed, prompts_per_round, rollout_chunk_prompts or num_samples changed: use a new output_dir"
            )
        return rows

    def chunk_seconds(self, r: int, c: int, kind: str) -> float:
        path = self._chunk(r, c, "meta.json")
        return json.loads(path.read_text()).get(f"{kind}_seconds", 0.0) if path.is_file() else 0.0

    # plan ------------------------------------------------------------------------------------------------
    def save_plan(self, r: int, samples: list[dict], scores: list[dict], pairs: list[dict], plan: dict) -> None:
        folder = self.round_dir(r, create=True)
        write_jsonl(folder / "samples.jsonl", samples)
        write_jsonl(folder / "scores.jsonl", scores)
        write_jsonl(folder / "pairs.jsonl", pairs)
        write_text(folder / "plan.json", json.dumps(plan, indent=1))  # last: its presence means all are whole

    def load_plan(self, r: int) -> tuple[list[dict], dict] | None:
        path = self.round_dir(r) / "plan.json"
        if not path.is_file():
            return None
        return read_rows(self.round_dir(r) / "pairs.jsonl"), json.loads(path.read_text())

    def save_reference(self, r: int, rows: list[dict]) -> None:
        write_jsonl(self.round_dir(r, create=True) / "reference.jsonl", rows)

    def load_reference(self, r: int) -> list[dict] | None:
        path = self.round_dir(r) / "reference.jsonl"
        return read_rows(path) if path.is_file() else None

    def save_heldout(self, r: int, rows: list[dict]) -> None:
        write_jsonl(self.round_dir(r, create=True) / "heldout.jsonl", rows)

    # completion ------------------------------------------------------------------------------------------
    def mark_complete(self, r: int, record: dict) -> None:
        """Record round `r` as complete (after its checkpoint exists) and rewrite `rounds.jsonl` from all rounds."""
        write_text(self.round_dir(r, create=True) / "complete.json", json.dumps(record, indent=1))
        write_jsonl(self.log_path, self.completed())

    def completed(self) -> list[dict]:
        """Records of the complete rounds, in round order, stopping at the first round that is not complete."""
        records = []
        r = 0
        while (path := self.round_dir(r) / "complete.json").is_file():
            records.append(json.loads(path.read_text()))
            r += 1
        return records

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Whole checkpoints (`trainer_state.json` present) in `output_dir`, by step."""
        found = [(checkpoint_step(p), p) for p in self.output_dir.glob("checkpoint-*")]
        return sorted((s, p) for s, p in found if s is not None)

    def resume_point(self) -> tuple[int, str | None]:
        """(first round not complete, newest whole checkpoint to resume from, or None for a fresh start).

        The newest checkpoint may lie inside that round (a mid-round save) or at its end (killed before
        `complete.json`); the trainer continues from there without repeating an optimizer step."""
        records = self.completed()
        last_done = max((rec.get("global_step", 0) for rec in records), default=0)
        newer = [(s, p) for s, p in self.checkpoints() if s >= last_done]
        if newer:
            return len(records), str(newer[-1][1])
        if last_done:
            raise RoundStateError(f"{self.log_path}: the rounds trained up to step {last_done} but no whole "
                                  f"checkpoint-N (N >= {last_done}) is in {self.output_dir}")
        return len(records), None
