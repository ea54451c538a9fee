"""Stage 3, cross-validation: every function runs on every case through the one scoring path
(`rewards.VerifierCodeReward`, the sandboxed `VerifierPool`, one batched run per chunk). A function must pass
`rewards.verifier_problem` (compiles, defines `evaluate(response)`); a case is kept when more than
`min_case_agreement` of the compiled functions agree with its expected output; a function is kept when its accuracy
on the kept cases is above `min_function_accuracy`; an instruction needs `min_functions` functions and `min_cases`
cases. Also records the instruction-level preference material: kept case inputs that pass every kept function
(`chosen_cases`) and those that fail every one (`rejected_cases`).

The static check parses but never executes the code. Timeouts, crashes and non-bool results count as wrong
answers.
"""

from __future__ import annotations

from collections import Counter

NAME = "cross_validation"


def judge(results: list[list[bool | None]], expected: list[bool], cfg) -> tuple[list[int], list[int], list[float]]:
    """(kept function indices, kept case indices, accuracy of each function on the kept cases).

    `results[f][c]` is function f's verdict on case c.
    """
    n_funcs = len(results)
    if not n_funcs:
        return [], [], []
    kept_cases = [
        c for c, want in enumerate(expected)
        if sum(results[f][c] is want for f in range(n_funcs)) / n_funcs > cfg.min_case_agreement
    ]
    accuracy = [
        (sum(results[f][c] is expected[c] for c in kept_cases) / len(kept_cases)) if kept_cases else 0.0
        for f in range(n_funcs)
    ]
    kept_funcs = [f for f in range(n_funcs) if accuracy[f] > cfg.min_function_accuracy]
    return kept_funcs, kept_cases, accuracy


def process(ctx, rows: list[dict], chunk_index: int):
    from autoif_train.rewards import VerifierCodeReward, verifier_problem
    from autoif_train.synth.pipeline import StageResult

    cfg = ctx.config
    drops, details = Counter(), Counter()
    compiled: list[list[str]] = []
    targets, cases = [], []
    for row in rows:
        good = []
        for code in row["functions"]:
            problem = verifier_problem(code)
            if problem:
                details[f"function:{problem[0]}"] += 1
            else:
                good.append(code)
        compiled.append(good)
        if good:
            targets += [good] * len(row["cases"])  # every compiled function on each case
            cases += [case["input"] for case in row["cases"]]
    per_case = VerifierCodeReward(ctx.pool).score(targets, cases).results if targets else []
    out, pos = [], 0
    for row, good in zip(rows, compiled):
        n_cases = len(row["cases"])
        block = per_case[pos : pos + n_cases] if good else []
        pos += n_cases if good else 0
        results = [[block[c][f] for c in range(n_cases)] for f in range(len(good))]  # results[f][c]
        details["calls"] += len(good) * n_cases
        details["calls_none"] += sum(v is None for r in results for v in r)
        if not good:
            drops["no_compilable_function"] += 1
            continue
        expected = [case["output"] for case in row["cases"]]
        kept_funcs, kept_cases, accuracy = judge(results, expected, cfg)
        details["function:low_accuracy"] += len(good) - len(kept_funcs)
        details["case:disagreement"] += n_cases - len(kept_cases)
        if len(kept_funcs) < cfg.min_functions:
            drops["too_few_functions"] += 1
            continue
        if len(kept_cases) < cfg.min_cases:
            drops["too_few_cases"] += 1
            continue
        order = sorted(kept_funcs, key=lambda f: -accuracy[f])
        chosen = [row["cases"][c]["input"] for c in kept_cases if all(results[f][c] is True for f in kept_funcs)]
        rejected = [row["cases"][c]["input"] for c in kept_cases if all(results[f][c] is False for f in kept_funcs)]
        out.append({
            **row,
            "functions": [good[f] for f in order],
            "function_accuracy": [round(accuracy[f], 4) for f in order],
            "cases": [row["cases"][c] for c in kept_cases],
            "chosen_cases": chosen,
            "rejected_cases": rejected,
        })
    return StageResult(out, drops, details)
