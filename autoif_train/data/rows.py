"""Load and validate training data: SFT conversations, DPO pairs and online-DPO prompt rows with verifiers.

Local files are JSONL, JSON (a list of objects) or parquet; anything else that is not a local path is read as a
hub dataset id. Every problem is reported as `FILE row N: what is wrong`, before any training starts. Validation
checks shapes and types only: it does not check that verifier code is correct or safe (the sandbox does that).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A data file is missing or one of its rows is malformed; the message names the file, row and field."""


def _looks_local(path: str) -> bool:
    return path.endswith(LOCAL_SUFFIXES) or path.startswith((".", "/", "~")) or os.path.exists(path)


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import datasets

        return datasets.Dataset.from_parquet(str(path)).to_list()
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        rows = data
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {n}: not valid JSON: {err.msg}") from err
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {n}: expected a JSON object, got {type(row).__name__}")
    return rows


def read_rows(path: str, split: str = "train") -> list[dict]:
    """Rows of a local data file (or every data file of a local folder), or of a hub dataset's split."""
    if not _looks_local(path):
        import datasets

        return datasets.load_dataset(path, split=split).to_list()
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset file not found: {path}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in LOCAL_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder holds no {'/'.join(LOCAL_SUFFIXES)} files")
        return [row for f in files for row in _read_file(f)]
    rows = _read_file(p)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _check_messages(messages: Any, where: str, field_name: str, final_assistant: bool | None) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field {field_name!r} must be a non-empty list of {{role, content}} messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: {field_name}[{i}] must be an object with string 'role' and 'content'")
    last_is_assistant = messages[-1]["role"] == "assistant"
    if final_assistant is True and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field {field_name!r} has no assistant turn to train on")
    if final_assistant is False and last_is_assistant:
        raise DataError(f"{where}: field {field_name!r} must end before the assistant turn (it ends with one)")
    return messages


def load_sft_rows(path: str, split: str = "train") -> list[dict]:
    """Conversational SFT rows: each needs `messages` with at least one assistant turn (loss goes there only)."""
    rows = read_rows(path, split)
    for n, row in enumerate(rows, start=1):
        if "messages" not in row:
            raise DataError(f"{path} row {n}: missing field 'messages' (SFT rows are conversations)")
        _check_messages(row["messages"], f"{path} row {n}", "messages", final_assistant=True)
    return rows


def load_dpo_rows(path: str, split: str = "train") -> list[dict]:
    """Preference rows: `prompt` (string or messages), `chosen` and `rejected` (strings or assistant messages)."""
    rows = read_rows(path, split)
    for n, row in enumerate(rows, start=1):
        where = f"{path} row {n}"
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r} (DPO rows need prompt, chosen, rejected)")
            value = row[key]
            if isinstance(value, list):
                _check_messages(value, where, key, final_assistant=None)
            elif not isinstance(value, str) or (key != "prompt" and not value):
                raise DataError(f"{where}: field {key!r} must be a non-empty string or a list of messages")
    return rows


@dataclass
class PromptRow:
    """One online-DPO prompt: chat messages without the final assistant turn, and its verifiers' code."""

    id: str
    messages: list[dict]
    verifiers: list[str]
    extra: dict = field(default_factory=dict)


def load_verifier_bundle(path: str) -> dict[str, str]:
    """`{id: code}` from a JSONL of `{"id", "code"}` rows (e.g. `verifiers/functions.jsonl`)."""
    bundle = {}
    for n, row in enumerate(read_rows(path), start=1):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("code"), str):
            raise DataError(f"{path} row {n}: verifier bundle rows need string fields 'id' and 'code'")
        if row["id"] in bundle:
            raise DataError(f"{path} row {n}: duplicate verifier id {row['id']!r}")
        bundle[row["id"]] = row["code"]
    return bundle


def default_bundle_path(dataset_path: str) -> str | None:
    """`functions.jsonl` beside a local prompt file, when present (the layout `python -m autoif_train.bundle` writes)."""
    candidate = Path(dataset_path).expanduser().parent / "functions.jsonl"
    return str(candidate) if _looks_local(dataset_path) and candidate.is_file() else None


def load_prompt_rows(path: str, bundle_path: str | None = None, split: str = "train") -> list[PromptRow]:
    """Online-DPO / GRPO prompt rows (`id`, `prompt` or `messages`, `verifiers` and/or IFEval-style
    `instruction_id_list` + `kwargs` / `ground_truth`, kept in `extra`), with verifier ids resolved to code.

    A verifier entry is either Python source defining `evaluate(response)` or an id into `bundle_path`
    (default: `functions.jsonl` beside `path`). Constraint ids are checked by the rewards (`rewards.check_rows`). Raises `DataError` naming the file and row on the first problem.
    """
    from autoif_train.rewards import is_verifier_code

    rows = read_rows(path, split)
    bundle_path = bundle_path or default_bundle_path(path)
    bundle = load_verifier_bundle(bundle_path) if bundle_path else {}
    out, seen = [], set()
    for n, row in enumerate(rows, start=1):
        where = f"{path} row {n}"
        if not isinstance(row.get("id"), str) or not row["id"]:
            raise DataError(f"{where}: missing field 'id' (a non-empty string)")
        if row["id"] in seen:
            raise DataError(f"{where}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        if "messages" in row:
            messages = _check_messages(row["messages"], where, "messages", final_assistant=False)
        elif isinstance(row.get("prompt"), list):
            messages = _check_messages(row["prompt"], where, "prompt", final_assistant=False)
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            messages = [{"role": "user", "content": row["prompt"]}]
        else:
            raise DataError(f"{where}: missing field 'prompt' (a string or messages) or 'messages'")
        verifiers = row.get("verifiers")
        if verifiers is None and ("instruction_id_list" in row or "ground_truth" in row):
            verifiers = []  # IFEval-style constraint ids, checked by the ifeval_checkers reward
        elif not isinstance(verifiers, list) or not verifiers:
            raise DataError(f"{where}: missing field 'verifiers' (a non-empty list of code strings or bundle ids) or "
                            "'instruction_id_list' + 'kwargs' (IFEval / IFBench constraint ids)")
        codes = []
        for v in verifiers:
            if not isinstance(v, str):
                raise DataError(f"{where}: verifiers must be strings, got {type(v).__name__}")
            if is_verifier_code(v):
                codes.append(v)
            elif v in bundle:
                codes.append(bundle[v])
            else:
                src = f"in verifier bundle {bundle_path}" if bundle_path else "(no verifier_bundle given)"
                raise DataError(f"{where}: unknown verifier id {v!r} {src}")
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages", "verifiers")}
        out.append(PromptRow(id=row["id"], messages=messages, verifiers=codes, extra=extra))
    return out
