"""Durable per-round state of online DPO under `output_dir/rounds/round_XXXX/`, and the `rounds.jsonl` log.

Each round folder receives, in order: `samples.jsonl` (K responses per prompt), `scores.jsonl` (each verifier's
result and the pass rate per response), `pairs.jsonl` + `pairs.json` (the pairs and their counts), all before
training on them, then `heldout.jsonl` (when `eval_every_round`) and finally `complete.json` (metrics and the
checkpoint saved at the end of the round); `samples.json` / `scores.json` hold the timings. Files are
written whole and renamed into place, so a crash leaves either the old state or the new one, never half a file.
Only the main process writes. This protects against crashes and kills, not against two runs sharing a folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RoundStateError(RuntimeError):
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

    def _check_ids(self, r: int, name: str, rows: list[dict], prompt_ids: list[str]) -> None:
        saved = [row["prompt_id"] for row in rows]
        if saved != prompt_ids:
            raise RoundStateError(
                f"{self.round_dir(r) / name}: saved for prompts {saved[:3]}... but this run's round {r} has "
                f"{prompt_ids[:3]}...; the dataset, seed or prompts_per_round changed: use a new output_dir"
            )

    # samples -----------------------------------------------------------------------------------------------
    def save_samples(self, r: int, prompt_ids: list[str], responses: list[list[str]], seconds: float) -> None:
        rows = [{"prompt_id": pid, "responses": resp} for pid, resp in zip(prompt_ids, responses, strict=True)]
        _write_jsonl(self.round_dir(r, create=True) / "samples.jsonl", rows)
        _write_atomic(self.round_dir(r) / "samples.json", json.dumps({"generation_seconds": seconds}))

    def load_samples(self, r: int, prompt_ids: list[str]) -> list[list[str]] | None:
        path = self.round_dir(r) / "samples.jsonl"
        if not path.is_file():
            return None
        rows = _read_jsonl(path)
        self._check_ids(r, "samples.jsonl", rows, prompt_ids)
        return [row["responses"] for row in rows]

    # scores ------------------------------------------------------------------------------------------------
    def save_scores(self, r: int, prompt_ids, results, pass_rates, seconds: float) -> None:
        rows = [
            {"prompt_id": pid, "pass_rates": rates, "results": res}
            for pid, res, rates in zip(prompt_ids, results, pass_rates, strict=True)
        ]
        _write_jsonl(self.round_dir(r, create=True) / "scores.jsonl", rows)
        _write_atomic(self.round_dir(r) / "scores.json", json.dumps({"scoring_seconds": seconds}))

    def load_scores(self, r: int, prompt_ids: list[str]) -> list[list[float]] | None:
        path = self.round_dir(r) / "scores.jsonl"
        if not path.is_file():
            return None
        rows = _read_jsonl(path)
        self._check_ids(r, "scores.jsonl", rows, prompt_ids)
        return [row["pass_rates"] for row in rows]

    # pairs -------------------------------------------------------------------------------------------------
    def save_pairs(self, r: int, pairs: list[dict], summary: dict) -> None:
        _write_jsonl(self.round_dir(r, create=True) / "pairs.jsonl", pairs)
        _write_atomic(self.round_dir(r) / "pairs.json", json.dumps(summary, indent=1))

    def load_pairs(self, r: int) -> tuple[list[dict], dict] | None:
        summary = self.round_dir(r) / "pairs.json"
        if not summary.is_file():  # written after pairs.jsonl: its presence means both are whole
            return None
        return _read_jsonl(self.round_dir(r) / "pairs.jsonl"), json.loads(summary.read_text())

    def timing(self, r: int, name: str, key: str) -> float:
        path = self.round_dir(r) / name
        return json.loads(path.read_text()).get(key, 0.0) if path.is_file() else 0.0

    def save_heldout(self, r: int, rows: list[dict]) -> None:
        _write_jsonl(self.round_dir(r, create=True) / "heldout.jsonl", rows)

    # completion --------------------------------------------------------------------------------------------
    def mark_complete(self, r: int, record: dict) -> None:
        """Record round `r` as complete (after its checkpoint exists) and rewrite `rounds.jsonl` from all rounds."""
        _write_atomic(self.round_dir(r, create=True) / "complete.json", json.dumps(record, indent=1))
        _write_jsonl(self.log_path, self.completed())

    def completed(self) -> list[dict]:
        """Records of the complete rounds, in round order, stopping at the first round that is not complete."""
        records = []
        r = 0
        while (path := self.round_dir(r) / "complete.json").is_file():
            records.append(json.loads(path.read_text()))
            r += 1
        return records

    def resume_point(self) -> tuple[int, str | None]:
        """(first round to run, checkpoint to resume from or None for a fresh start)."""
        records = self.completed()
        checkpoint = None
        for rec in records:
            if rec.get("checkpoint"):  # a folder name inside output_dir
                checkpoint = str(self.output_dir / rec["checkpoint"])
        if checkpoint and not (Path(checkpoint) / "trainer_state.json").is_file():
            raise RoundStateError(f"round log names checkpoint {checkpoint} but it is missing or incomplete")
        return len(records), checkpoint
