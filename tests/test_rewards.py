"""One reward path: the same rows through every consumer give the same scores; combined rewards; host sizing; scoring
spread over 2 ranks gives the scores of 1.

Run: python -m pytest tests/test_rewards.py -q          (the 2-rank accelerate launch is marked slow)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoif_train import bundle, verify
from autoif_train.data.rows import PromptRow
from autoif_train.evaluation.verifier_pass_rate import score_verifier_responses
from autoif_train.rewards import (
    CombinedReward,
    Reward,
    RewardError,
    Scores,
    VerifierCodeReward,
    build_reward,
    check_rows,
    verifier_problem,
)
from autoif_train.rewards.spread import score_spread, share
from autoif_train.sandbox import VerifierPool
from autoif_train.sandbox.settings import host_pool_settings

ROOT = Path(__file__).resolve().parent.parent
LOWER = "def evaluate(response):\n    return response == response.lower()\n"
SHORT = "def evaluate(response):\n    return 'true' if len(response.split()) < 5 else 'false'\n"
COMMA = "def evaluate(response):\n    return ',' not in response\n"
RAISES = "def evaluate(response):\n    return response[1000]\n"
NOT_BOOL = "def evaluate(response):\n    return 1\n"
ROWS = [[LOWER, SHORT], [LOWER, SHORT, RAISES], [RAISES, NOT_BOOL], [COMMA], [LOWER, COMMA], [SHORT], [COMMA, SHORT]]
RESPONSES = ["all lower", "Not Lower and quite a long answer", "x", "a, b", "ok no comma", "one two three four five",
             "fine"]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout=2.0, isolation="seccomp") as p:
        yield p


@pytest.fixture(scope="module")
def reference(pool) -> Scores:
    return VerifierCodeReward(pool).score(ROWS, RESPONSES)


def test_reference_scores_by_construction(reference):
    assert reference.results[0] == [True, True]
    assert reference.results[1] == [False, False, None]
    assert reference.results[2] == [None, None]
    assert reference.pass_rates[:4] == [1.0, 0.0, None, 0.0]
    assert reference.unscored == [False, False, True, False, False, False, False]


def _prompt_rows() -> list[PromptRow]:
    return [PromptRow(id=f"p{i}", messages=[{"role": "user", "content": "q"}], verifiers=codes)
            for i, codes in enumerate(ROWS)]


def test_every_consumer_gives_the_same_scores(reference, pool, tmp_path):
    want_results, want_rates = reference.results, reference.rates(0.0)

    # evaluation's verifier pass rate (and so quickstart / autoif evaluate)
    _, records = score_verifier_responses(_prompt_rows(), RESPONSES, pool)
    assert [r["results"] for r in records] == want_results
    assert [r["pass_rate"] for r in records] == want_rates

    # autoif verify
    codes = {code: f"v{i}" for i, code in enumerate(dict.fromkeys(c for row in ROWS for c in row))}
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"id": i, "code": c}) + "\n" for c, i in codes.items()))
    (tmp_path / "r.jsonl").write_text("".join(
        json.dumps({"id": str(n), "response": resp, "verifiers": [codes[c] for c in row]}) + "\n"
        for n, (row, resp) in enumerate(zip(ROWS, RESPONSES))))
    verify.main(tmp_path / "v.jsonl", tmp_path / "r.jsonl", tmp_path / "o.jsonl", progress=False)
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [o["results"] for o in out] == want_results and [o["pass_rate"] for o in out] == want_rates

    # online DPO's rollout scoring (the trainer's collective `_score`, one process)
    from autoif_train.rewards.base import RewardFields
    from autoif_train.training.rollouts import RolloutMixin

    trainer = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True, num_processes=1, process_index=0),
                              args=RewardFields(verifier_workers=2, verifier_timeout=2.0), _rewards=None)
    trainer._reward = RolloutMixin._reward.__get__(trainer)  # the recipe's rewards, in the trainer's own pool
    samples = [{"prompt_index": i, "prompt_id": f"p{i}", "sample_index": 0, "text": t} for i, t in enumerate(RESPONSES)]
    try:
        scored = RolloutMixin._score(trainer, _prompt_rows(), samples)
    finally:
        trainer._rewards.close()
    assert [s["results"] for s in scored] == want_results
    assert [s["pass_rate"] for s in scored] == reference.pass_rates  # None = unscored: joins no pair

    # synthesis: response stage (scripted generator) and cross-validation; the bundle's cross-check
    from autoif_train.synth import cross_validation, responses
    from autoif_train.synth.config import SynthConfig

    ctx = SimpleNamespace(config=SynthConfig(responses_per_query=1), pool=pool, gen_config=lambda *a, **k: None,
                          generator=SimpleNamespace(generate=lambda prompts, cfg: [[RESPONSES[int(p)]] for p in prompts]))
    rows = [{"id": str(i), "prompt": str(i), "functions": codes} for i, codes in enumerate(ROWS)]
    got = {r["id"]: r["responses"][0] for r in responses.process(ctx, rows, 0).rows}
    for i, rate in enumerate(want_rates):
        if str(i) in got:
            assert got[str(i)]["pass_rate"] == rate and got[str(i)].get("unscored", False) == reference.unscored[i]
    assert got and "2" not in got  # unscored only: no usable response

    case_rows = [{"id": "c", "instruction": "x", "functions": [LOWER, SHORT],
                  "cases": [{"input": r, "output": True} for r in RESPONSES]}]
    ctx.config = SynthConfig(min_case_agreement=0.0, min_function_accuracy=0.0)
    kept = cross_validation.process(ctx, case_rows, 0)
    inst = bundle.Instruction("c", "x", "cat", [bundle.Verifier("lower", LOWER), bundle.Verifier("short", SHORT)],
                              [bundle.Case(r, True) for r in RESPONSES])
    mismatches = {(m.verifier_id, m.case_index) for m in bundle.cross_validate([inst], pool)}
    direct = VerifierCodeReward(pool).score([[LOWER, SHORT]] * len(RESPONSES), RESPONSES).results
    assert mismatches == {(v, c) for c, res in enumerate(direct) for v, r in zip(("lower", "short"), res) if r is not True}
    chosen = set(kept.rows[0]["chosen_cases"]) if kept.rows else set()
    assert chosen == {RESPONSES[c] for c, res in enumerate(direct) if all(r is True for r in res)}


def test_static_check_is_one_function():
    assert verifier_problem(LOWER) is None
    assert verifier_problem("def evaluate(response, strict=True):\n    return True\n") is None
    assert verifier_problem("def evaluate(:")[0] == "syntax_error"
    assert verifier_problem("def f(r):\n    return 1\n")[0] == "no_evaluate"
    assert verifier_problem("def evaluate(a, b):\n    return 1\n")[0] == "bad_signature"
    assert verifier_problem("def evaluate():\n    return 1\n")[0] == "bad_signature"


class _Length(Reward):
    """A reward on rows with a `max_len` field: 1 check, passes when the response is at most that long."""

    name = "length"

    def applies(self, row):
        return "max_len" in row

    def score(self, rows, responses):
        results = [[len(t) <= row["max_len"]] for row, t in zip(rows, responses)]
        return Scores(results, [float(r[0]) for r in results])


def test_combined_rewards_weight_and_skip(pool):
    rows = [{"verifiers": [LOWER], "max_len": 3}, {"verifiers": [LOWER]}, {"max_len": 3}, {"verifiers": [RAISES]}]
    combined = CombinedReward([VerifierCodeReward(pool), _Length()], weights=[3.0, 1.0])
    scores = combined.score(rows, ["abcdef", "abc", "ab", "x"])
    # row 0: lower passes (1.0 x 3), too long (0.0 x 1) -> 0.75; row 1 verifier only; row 2 length only; row 3 unscored
    assert scores.pass_rates == [0.75, 1.0, 1.0, None]
    assert scores.results == [[True, False], [True], [True], [None]]
    with pytest.raises(RewardError, match=r"^f.jsonl:2: field 'verifiers': missing: no field"):
        check_rows(build_reward(["verifier_code"], pool=pool), [{"verifiers": [LOWER]}, {"id": "x"}], "f.jsonl")
    with pytest.raises(RewardError, match="unknown reward"):
        build_reward(["nope"])
    with pytest.raises(RewardError, match="weights"):
        CombinedReward([_Length()], weights=[1.0, 2.0])


def test_pool_sized_to_host_cores():
    assert host_pool_settings(0, 1.0, local_world=8, cores=96) == (11, 1.0)  # 12 cores a rank, one for the trainer
    assert host_pool_settings(0, 1.0, local_world=2, cores=2) == (1, 1.0)
    assert host_pool_settings(8, 1.0, local_world=8, cores=16) == (8, 4.0)  # 64 processes on 16 cores: 4x time
    assert [list(share(7, 2, r)) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [list(share(1, 3, r)) for r in range(3)] == [[0], [], []]


def test_score_spread_on_one_process_is_the_reward(pool, reference):
    assert score_spread(VerifierCodeReward(pool), ROWS, RESPONSES) == reference


SPREAD_SCRIPT = """
import json, sys
from accelerate import Accelerator, PartialState
from autoif_train.core.process_group import release_process_group
from autoif_train.rewards import VerifierCodeReward
from autoif_train.rewards.spread import score_spread
from autoif_train.sandbox import VerifierPool
PartialState(backend="gloo")  # DeepSpeed on CPU: without it every rank believes it is alone
acc = Accelerator()
assert acc.num_processes == 2
rows, responses = json.loads(open(sys.argv[1]).read())
with VerifierPool(workers=1, timeout=2.0) as pool:
    out = {m: score_spread(VerifierCodeReward(pool), rows, responses, acc, mode=m) for m in ("ranks", "main")}
json.dump({m: [s.results, s.pass_rates] for m, s in out.items()}, open(sys.argv[2] + str(acc.process_index), "w"))
release_process_group()  # as every `autoif` command does: a gloo group left to exit can abort the process
"""


@pytest.mark.slow
def test_scoring_on_two_ranks_gives_the_scores_of_one(reference, tmp_path):
    """7 responses on 2 ZeRO-3 CPU ranks (shares 4 + 3), each rank its own sandbox pool: every rank gets the
    single-process scores, in both modes."""
    (tmp_path / "s.py").write_text(SPREAD_SCRIPT)
    (tmp_path / "in.json").write_text(json.dumps([ROWS, RESPONSES]))
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
           str(tmp_path / "s.py"), str(tmp_path / "in.json"), str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out{rank}").read_text())
        for mode in ("ranks", "main"):
            assert got[mode] == [reference.results, reference.pass_rates]


# ---------------------------------------------------------------- ifeval_checkers

LOWER_NO_COMMA = {"instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
                  "kwargs": [{}, {}]}


@pytest.fixture(scope="module")
def checkers():
    from autoif_train.rewards.ifeval_checkers import IFEvalCheckersReward

    return IFEvalCheckersReward()


def test_ifeval_checkers_fraction_of_constraints_by_construction(checkers):
    truth = {"instruction_id": LOWER_NO_COMMA["instruction_id_list"], "kwargs": [None, None]}
    rows = [dict(LOWER_NO_COMMA, id="a", prompt="p"),
            {"id": "b", "prompt": "p", "ground_truth": json.dumps([truth])},  # IF_multi_constraints_upto5 shape
            {"id": "c", "prompt": "p", "ground_truth": repr(truth)}]  # a Python-literal string works too
    for row in rows:
        scores = checkers.score([row] * 3, ["all lower no commas", "Upper, and comma", "lower, with comma"])
        assert scores.results == [[True, True], [False, False], [True, False]]
        assert scores.pass_rates == [1.0, 0.0, 0.5]


def test_ifeval_checkers_reproduce_the_evaluation(checkers, ifeval_path):
    from autoif_train.evaluation.instruction_following import build_benchmark, read_benchmark_rows

    bench = build_benchmark("ifeval", read_benchmark_rows(ifeval_path), str(ifeval_path),
                            "if_verifiable.ifeval.instructions_registry", limit=40)
    canned = ["hello world", "HELLO WORLD. THIS IS ALL CAPS", "*highlighted section* and *another one* here",
              '{"answer": "json"}', "Title <<poem of joy>>\n\nP.S. bye", "word " * 400, ""]
    responses = [canned[i % len(canned)] for i in range(len(bench.rows))]
    _, records = bench.score(responses)
    rows = [{"id": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
             "kwargs": r["kwargs"]} for r in bench.rows]
    scores = checkers.score(rows, responses)
    assert scores.results == [rec["strict"] for rec in records]
    assert scores.pass_rates == [sum(rec["strict"]) / len(rec["strict"]) for rec in records]
    assert 0 < sum(scores.pass_rates) < len(rows)  # the canned responses pass some constraints, not all


def test_prompt_rows_with_constraints_and_errors_name_file_line_and_field(tmp_path, pool):
    from autoif_train.data.rows import DataError, load_prompt_rows

    path = tmp_path / "p.jsonl"
    good = [dict(LOWER_NO_COMMA, id="a", prompt="Say hi."), {"id": "b", "prompt": "x", "verifiers": [LOWER]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    rows = load_prompt_rows(str(path))
    both = build_reward(["verifier_code", "ifeval_checkers"], pool=pool)
    check_rows(both, rows, str(path))
    assert both.score(rows, ["hi there", "Hi"]).pass_rates == [1.0, 0.0]
    with pytest.raises(RewardError, match=r"p.jsonl:1: field 'verifiers': missing: no field .*ifeval_checkers"):
        check_rows(build_reward(["verifier_code"], pool=pool), rows, str(path))
    bad = dict(LOWER_NO_COMMA, id="c", prompt="x", instruction_id_list=["change_case:english_lowercase", "nope:x"])
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n" + json.dumps(bad) + "\n")  # a blank line 3
    with pytest.raises(RewardError, match=r"p.jsonl:4: field 'instruction_id_list': unknown constraint.*nope"):
        check_rows(both, load_prompt_rows(str(path)), str(path))
    path.write_text(json.dumps({"id": "d", "prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'verifiers': missing .*instruction_id_list"):
        load_prompt_rows(str(path))


def test_train_refuses_an_unscorable_row_before_loading_a_model(tmp_path, capsys):
    from autoif_train.train import cli

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(dict(LOWER_NO_COMMA, id="a", prompt="x")) + "\n")
    model = tmp_path / "unloadable"  # passes the model-folder check; loading it would fail
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["--config", str(ROOT / "recipes" / "tiny" / "online_dpo.yaml"), "--dataset_path", str(path),
            "--model_name_or_path", str(model), "--output_dir", str(tmp_path / "run")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: field 'verifiers': missing: no field" in err and "ifeval_checkers" in err and "Traceback" not in err
    assert cli([*args, "--rewards", "verifier_code", "nope"]) == 2
    assert "field 'rewards': unknown reward" in capsys.readouterr().err


def test_llm_judge_reward_parses_scores_and_leaves_unparseable_unscored():
    """A scripted judge (parsing only): the synthesis quality prompt, score / 10, unparseable -> unscored."""
    from autoif_train.rewards.llm_judge import LLMJudgeReward

    class Judge:
        prompts: list = []

        def generate(self, prompts, config):
            self.prompts += prompts
            return [["Score: 9\nfine"], ["Score: 3\nno"], ["I cannot say"]]

    judge = Judge()
    rows = [{"query": "Name a fruit.", "instruction": "Use one word."}, {"prompt": "Say hi."},
            {"messages": [{"role": "user", "content": "x"}]}]
    scores = LLMJudgeReward(judge).score(rows, ["Apple", "Hello there", "?"])
    assert scores.pass_rates == [0.9, 0.3, None] and scores.results == [[True], [False], [None]]
    assert "Request: Name a fruit." in judge.prompts[0] and "Constraint: Use one word." in judge.prompts[0]
    assert "Request: Say hi." in judge.prompts[1]
    with pytest.raises(RewardError, match="judge_model"):
        build_reward(["llm_judge"])
