"""Load and validate training data: SFT conversations, DPO pairs and online-DPO prompt rows with verifiers.

Local files are JSONL, JSON (a list of objects) or parquet; anything else that is not a local path is read as a
hub dataset id. Every problem is reported as `FILE:LINE: field 'x': what is wrong`, before any training starts.
Validation checks shapes and types only: it does not check that verifier code is correct or safe (the sandbox does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoif_train.core.errors import InputError
from autoif_train.core.io import Row, Where, is_local
from autoif_train.core.io import read_rows as read_rows_


class DataError(InputError):
    """A data file is missing or one of its rows is malformed; the message names the file, line and field."""


def read_rows(path: str, split: str = "train") -> list[Row]:
    """Rows of a local data file (or every data file of a local folder), or of a hub dataset's split."""
    return read_rows_(path, split=split, nonempty=True, error=DataError)


def _check_messages(messages: Any, row: Row, field_name: str, final_assistant: bool | None) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise row.where.error(field_name, "must be a non-empty list of {role, content} messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise row.where.error(f"{field_name}[{i}]", "must be an object with string 'role' and 'content'")
    last_is_assistant = messages[-1]["role"] == "assistant"
    if final_assistant is True and not any(m["role"] == "assistant" for m in messages):
        raise row.where.error(field_name, "has no assistant turn to train on")
    if final_assistant is False and last_is_assistant:
        raise row.where.error(field_name, "must end before the assistant turn (it ends with one)")
    return messages


def load_sft_rows(path: str, split: str = "train") -> list[dict]:
    """Conversational SFT rows in one of TRL's two forms, the same for every row of a file:
    `messages` with at least one assistant turn (loss on assistant turns: `assistant_only_loss`), or `prompt`
    (messages ending before the assistant turn) and `completion` (the assistant messages; loss there only, TRL's
    `completion_only_loss`, which works with any chat template)."""
    rows = read_rows(path, split)
    first_form = None
    for row in rows:
        form = "messages" if "messages" in row else "prompt/completion" if "completion" in row else None
        if form is None:
            raise row.where.error("messages", "missing (SFT rows are conversations: `messages`, or `prompt` and "
                                              "`completion`)")
        if first_form is not None and form != first_form:
            raise row.where.error(form.split("/")[-1], f"is {form}, but earlier rows are {first_form}; use one form "
                                                      "per file")
        first_form = form
        if form == "messages":
            _check_messages(row["messages"], row, "messages", final_assistant=True)
            continue
        if "prompt" not in row:
            raise row.where.error("prompt", "missing (a `completion` SFT row needs its `prompt`)")
        _check_messages(row["prompt"], row, "prompt", final_assistant=False)
        _check_messages(row["completion"], row, "completion", final_assistant=True)
        if any(m["role"] != "assistant" for m in row["completion"]):
            raise row.where.error("completion", "must hold assistant messages only")
    return rows


def sft_columns(rows: list[dict]) -> tuple[str, ...]:
    """The dataset columns of `load_sft_rows`' rows: `("messages",)` or `("prompt", "completion")`."""
    return ("messages",) if not rows or "messages" in rows[0] else ("prompt", "completion")


def load_dpo_rows(path: str, split: str = "train") -> list[dict]:
    """Preference rows: `prompt` (string or messages), `chosen` and `rejected` (strings or assistant messages)."""
    rows = read_rows(path, split)
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise row.where.error(key, "missing (DPO rows need prompt, chosen, rejected)")
            value = row[key]
            if isinstance(value, list):
                _check_messages(value, row, key, final_assistant=None)
            elif not isinstance(value, str) or (key != "prompt" and not value):
                raise row.where.error(key, "must be a non-empty string or a list of messages")
    return rows


@dataclass
class PromptRow:
    """One online-DPO prompt: chat messages without the final assistant turn, and its verifiers' code."""

    id: str
    messages: list[dict]
    verifiers: list[str]
    extra: dict = field(default_factory=dict)
    where: Where | None = field(default=None, compare=False, repr=False)  # file and line it was read from


def load_verifier_bundle(path: str) -> dict[str, str]:
    """`{id: code}` from a JSONL of `{"id", "code"}` rows (e.g. `verifiers/functions.jsonl`)."""
    bundle = {}
    for row in read_rows(path):
        for key in ("id", "code"):
            if not isinstance(row.get(key), str):
                raise row.where.error(key, "missing or not a string (verifier bundle rows are {id, code})")
        if row["id"] in bundle:
            raise row.where.error("id", f"duplicate verifier id {row['id']!r}")
        bundle[row["id"]] = row["code"]
    return bundle


def default_bundle_path(dataset_path: str) -> str | None:
    """`functions.jsonl` beside a local prompt file, when present (the layout `python -m autoif_train.bundle` writes)."""
    candidate = Path(dataset_path).expanduser().parent / "functions.jsonl"
    return str(candidate) if is_local(dataset_path) and candidate.is_file() else None


def load_prompt_rows(path: str, bundle_path: str | None = None, split: str = "train") -> list[PromptRow]:
    """Online-DPO / GRPO prompt rows (`id`, `prompt` or `messages`, `verifiers` and/or IFEval-style
    `instruction_id_list` + `kwargs` / `ground_truth`, kept in `extra`), with verifier ids resolved to code.

    A verifier entry is either Python source defining `evaluate(response)` or an id into `bundle_path`
    (default: `functions.jsonl` beside `path`). Constraint ids are checked by the rewards (`rewards.check_rows`).
    Raises `DataError` naming the file, line and field of the first problem.
    """
    from autoif_train.rewards import is_verifier_code

    rows = read_rows(path, split)
    bundle_path = bundle_path or default_bundle_path(path)
    bundle = load_verifier_bundle(bundle_path) if bundle_path else {}
    out, seen = [], set()
    for row in rows:
        error = row.where.error
        if not isinstance(row.get("id"), str) or not row["id"]:
            raise error("id", "missing (a non-empty string)")
        if row["id"] in seen:
            raise error("id", f"duplicate id {row['id']!r}")
        seen.add(row["id"])
        if "messages" in row:
            messages = _check_messages(row["messages"], row, "messages", final_assistant=False)
        elif isinstance(row.get("prompt"), list):
            messages = _check_messages(row["prompt"], row, "prompt", final_assistant=False)
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            messages = [{"role": "user", "content": row["prompt"]}]
        else:
            raise error("prompt", "missing (a string or messages; or give 'messages')")
        verifiers = row.get("verifiers")
        if verifiers is None and ("instruction_id_list" in row or "ground_truth" in row):
            verifiers = []  # IFEval-style constraint ids, checked by the ifeval_checkers reward
        elif not isinstance(verifiers, list) or not verifiers:
            raise error("verifiers", "missing (a non-empty list of code strings or bundle ids; or give "
                                     "'instruction_id_list' + 'kwargs', IFEval / IFBench constraint ids)")
        codes = []
        for j, v in enumerate(verifiers):
            if not isinstance(v, str):
                raise error(f"verifiers[{j}]", f"must be a string, got {type(v).__name__}")
            if is_verifier_code(v):
                codes.append(v)
            elif v in bundle:
                codes.append(bundle[v])
            else:
                src = f"in verifier bundle {bundle_path}" if bundle_path else "(no verifier_bundle given)"
                raise error(f"verifiers[{j}]", f"unknown verifier id {v!r} {src}")
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages", "verifiers")}
        out.append(PromptRow(id=row["id"], messages=messages, verifiers=codes, extra=extra, where=row.where))
    return out
