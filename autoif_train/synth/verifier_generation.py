"""Stage 2, verifier + test-case generation: K answers per instruction, each a JSON `{"func", "cases"}`.

Functions and cases are pooled per instruction across its answers (plus any hand-written ones a seed carries);
cross-validation decides which survive. Unparseable answers are counted by reason in `details`
(`answer:no_json`, `answer:invalid_json`, `answer:missing_func`, ...). Nothing is executed here.
"""

from __future__ import annotations

from collections import Counter

from autoif_train.synth import prompts
from autoif_train.synth.parsing import parse_verifier_answer
from autoif_train.synth.stage import StageResult

NAME = "verifier_generation"


def _seed_material(row: dict) -> tuple[list[str], list[dict]]:
    funcs = [v["code"] if isinstance(v, dict) else v for v in row.get("verifiers", [])]
    cases = [c for c in row.get("cases", []) if isinstance(c, dict) and isinstance(c.get("input"), str)]
    return [f for f in funcs if isinstance(f, str)], [{"input": c["input"], "output": bool(c["output"])} for c in cases]


def process(ctx, rows: list[dict], chunk_index: int):
    cfg = ctx.config
    answers = ctx.generator.generate(
        [prompts.VERIFIER.format(instruction=row["instruction"]) for row in rows],
        ctx.gen_config(NAME, chunk_index, n=cfg.verifier_samples, temperature=cfg.verifier_temperature,
                       max_new_tokens=cfg.verifier_max_tokens),
    )
    out, drops, details = [], Counter(), Counter()
    for row, samples in zip(rows, answers):
        functions, cases = _seed_material(row)
        for text in samples:
            func, sample_cases, reason = parse_verifier_answer(text)
            details[f"answer:{reason}"] += 1
            if func is not None and func not in functions:
                functions.append(func)
            for case in sample_cases:
                if case not in cases:
                    cases.append(case)
        if not functions:
            drops["no_function_parsed"] += 1
        elif not cases:
            drops["no_case_parsed"] += 1
        else:
            kept = {k: v for k, v in row.items() if k not in ("verifiers", "cases")}
            out.append({**kept, "functions": functions, "cases": cases})
    return StageResult(out, drops, details)
