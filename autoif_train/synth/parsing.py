"""Robust extraction from model answers: JSON objects (fenced or bare), instruction lists, scores and NLI labels.

Nothing here executes model output: JSON is read with `json` (or `ast.literal_eval` for Python-style literals such
as `True`), never `eval`. Each parser returns a reason string when it fails, so stages can count drops by reason.
"""

from __future__ import annotations

import ast
import json
import re

FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\s*\n(.*?)```", re.DOTALL)
MAX_FUNC_CHARS = 20_000
MAX_CASE_CHARS = 10_000
MAX_CASES = 50
MAX_LITERAL_TRIES = 8
MAX_STARTS = 64


def _objects_in(text: str):
    """Yield every dict decodable starting at a `{` in `text` (JSON first, then Python literal syntax)."""
    decoder = json.JSONDecoder()
    start, attempts = text.find("{"), 0
    while start != -1 and attempts < MAX_STARTS:
        attempts += 1
        try:
            obj, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            obj, end = None, None
            close, tries = text.rfind("}"), 0
            while close > start and obj is None and tries < MAX_LITERAL_TRIES:
                tries += 1
                try:
                    obj = ast.literal_eval(text[start : close + 1])
                except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                    close = text.rfind("}", start, close)
            if obj is not None:
                end = close + 1
        if isinstance(obj, dict):
            yield obj
            start = text.find("{", end)
        else:
            start = text.find("{", start + 1)


def extract_json_object(text: str) -> tuple[dict | None, str]:
    """The first JSON object in a fenced block or bare in `text`: (object, "ok") or (None, reason)."""
    if not isinstance(text, str) or "{" not in text:
        return None, "no_json"
    candidates = [block for block in FENCE.findall(text) if "{" in block] + [text]
    for candidate in candidates:
        for obj in _objects_in(candidate[:200_000]):
            return obj, "ok"
    return None, "invalid_json"


def _strip_code_fence(code: str) -> str:
    match = FENCE.search(code)
    return match.group(1) if match else code


def _as_bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def parse_verifier_answer(text: str) -> tuple[str | None, list[dict], str]:
    """(function code, cases, "ok") from an answer `{"func": "...", "cases": [{"input", "output"}]}`, else a reason.

    Cases with a non-string input or a non-boolean output are skipped; reasons: no_json, invalid_json,
    missing_func, missing_evaluate, func_too_long, no_valid_cases.
    """
    obj, reason = extract_json_object(text)
    if obj is None:
        return None, [], reason
    func = next((obj[k] for k in ("func", "function", "code") if isinstance(obj.get(k), str)), None)
    if not func or not func.strip():
        return None, [], "missing_func"
    func = _strip_code_fence(func).strip() + "\n"
    if len(func) > MAX_FUNC_CHARS:
        return None, [], "func_too_long"
    from autoif_train.rewards.verifier_code import is_verifier_code

    if not is_verifier_code(func):  # the full static check runs in cross-validation (`rewards.verifier_problem`)
        return None, [], "missing_evaluate"
    cases = []
    raw_cases = obj.get("cases", obj.get("test_cases"))
    for case in raw_cases if isinstance(raw_cases, list) else []:
        if not isinstance(case, dict):
            continue
        value, expected = case.get("input", case.get("response")), _as_bool(case.get("output", case.get("expected")))
        if isinstance(value, str) and expected is not None and len(value) <= MAX_CASE_CHARS:
            cases.append({"input": value, "output": expected})
    if not cases:
        return func, [], "no_valid_cases"
    return func, cases[:MAX_CASES], "ok"


_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,3}[.):]|\[\d+\])\s*")


def parse_instruction_list(text: str) -> list[str]:
    """One instruction per line: numbering, bullets and quotes removed; headers (ending in ':') and blanks skipped."""
    found = []
    for line in (text or "").splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip("'").strip("`").strip()
        line = re.sub(r"^(?:instruction|new instruction)\s*\d*\s*[:.-]\s*", "", line, flags=re.IGNORECASE)
        if not line or line.endswith(":") or line.startswith("```"):
            continue
        found.append(line)
    return found


def normalize_text(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed: the key for near-duplicate instructions."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


_SCORE_PATTERNS = [
    re.compile(r"score\W{0,5}?\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)?", re.IGNORECASE),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)\b", re.IGNORECASE),
]


def parse_score(text: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """The judge's score: the last `Score: N` (or `N/10`) in `text`; None when absent or outside [low, high]."""
    if not isinstance(text, str):
        return None
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])
            return value if low <= value <= high else None
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        value = float(stripped)
        return value if low <= value <= high else None
    return None


NLI_LABELS = ("entailment", "neutral", "contradiction")


def parse_nli_label(text: str) -> str | None:
    """entailment | neutral | contradiction from a judge answer: an explicit `Label: X` line wins, else the only
    label word present; None when absent or ambiguous."""
    if not isinstance(text, str):
        return None
    lowered = text.lower()
    explicit = re.findall(r"(?:label|answer|verdict)\W{0,5}\s*(entail\w*|neutral|contradict\w*)", lowered)
    if explicit:
        word = explicit[-1]
    else:
        present = {lab for lab in NLI_LABELS if re.search(lab[:7], lowered)}
        if len(present) != 1:
            return None
        word = present.pop()
    return next(lab for lab in NLI_LABELS if word.startswith(lab[:7]))
