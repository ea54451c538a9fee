"""Exact online-DPO schedules: step budgets, micro-batches without double counting, and the learning rate read back
from a real run's logs against the analytic cosine with warm-up.

Run: python -m pytest tests/test_train_schedule.py -q
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from autoif_train.configs import parse_recipe
from autoif_train.train import main as train_main
from autoif_train.training.schedule import Schedule, micro_batches, resolve_scope, round_steps, visit_order

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "online_dpo.yaml"


def cosine(step: int, warmup: int, total: int, peak: float) -> float:
    """transformers' cosine with linear warm-up, written out: the LR used by optimizer step `step + 1`."""
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("pairs, epochs, world, ga, bs", [(13, 1.0, 2, 1, 2), (5, 2.0, 1, 2, 2), (3, 1.0, 2, 2, 2),
                                                          (1, 1.0, 1, 1, 4), (9, 1.5, 2, 1, 3)])
def test_micro_batches_visit_each_pair_as_often_as_epochs_say(pairs, epochs, world, ga, bs):
    steps = round_steps(pairs, epochs, world * ga * bs)
    order = visit_order(pairs, epochs, seed=3)
    assert len(order) == round(pairs * epochs)
    per_rank = [micro_batches(order, steps, world, ga, bs, rank) for rank in range(world)]
    assert all(len(b) == steps * ga for b in per_rank)  # every rank runs the same number of passes
    counted = Counter(i for batches in per_rank for idx, w in batches if w for i in idx)
    assert counted == Counter(order)  # weighted visits are exactly the planned visits: no top-up
    assert all(len(idx) <= bs and idx for batches in per_rank for idx, _ in batches)
    # no pair is visited twice before every pair was visited once
    first_pass = order[:pairs]
    assert sorted(first_pass) == list(range(pairs)) if len(order) >= pairs else True


def test_schedule_scopes():
    assert resolve_scope("auto", "cosine", total_known=True) == "global"
    assert resolve_scope("auto", "cosine", total_known=False) == "round"
    assert resolve_scope("auto", "constant", total_known=False) == "global"
    with pytest.raises(ValueError, match="pairs_per_round"):
        resolve_scope("global", "cosine", total_known=False)
    per_round = Schedule("cosine", warmup=0.25, scope="round")
    per_round.add_round(0, 4)
    per_round.add_round(4, 8)
    assert [per_round.factor(s) for s in range(4)] == pytest.approx([cosine(s, 1, 4, 1.0) for s in range(4)])
    assert [per_round.factor(4 + s) for s in range(8)] == pytest.approx([cosine(s, 2, 8, 1.0) for s in range(8)])
    glob = Schedule("cosine", warmup=0.1, scope="global", total_steps=20)
    assert [glob.factor(s) for s in range(20)] == pytest.approx([cosine(s, 2, 20, 1.0) for s in range(20)])


def _learning_rates(out: Path) -> dict[int, float]:
    state = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1] / "trainer_state.json"
    return {log["step"]: log["learning_rate"] for log in json.loads(state.read_text())["log_history"]
            if "learning_rate" in log and "loss" in log}


@pytest.mark.slow
def test_learning_rate_follows_the_recipe_with_pairs_per_round(tiny_model_dir, tmp_path):
    """pairs_per_round: every round trains the same known number of steps, so the global cosine (warm-up 0.1)
    is exact; the logged LR at every step equals the analytic value, and the progress total is the real total."""
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), [
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--pairs_per_round", "6",
        "--prompts_per_round", "2", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.1", "--learning_rate",
        "1e-3", "--epochs_per_round", "2", "--save_total_limit", "1"])
    result = train_main(*args)
    per_round = round_steps(6, 2.0, 2)  # 6 steps per round
    assert [r["train_steps"] for r in result.rounds] == [per_round, per_round]
    assert all(r["pairs"] == 6 for r in result.rounds)
    assert result.rounds[0]["prompt_end"] == result.rounds[1]["prompt_start"]  # rounds never overlap
    total = 2 * per_round
    lrs = _learning_rates(out)
    assert sorted(lrs) == list(range(1, total + 1))
    for step, lr in lrs.items():  # HF logs the LR of the step just taken
        assert lr == pytest.approx(cosine(step - 1, math.ceil(0.1 * total), total, 1e-3), rel=1e-6, abs=1e-12), step
    assert lrs[total] < 0.1e-3  # decayed to near zero at the end, as the recipe says


@pytest.mark.slow
def test_learning_rate_per_round_with_fixed_prompts(tiny_model_dir, tmp_path):
    """Fixed prompts per round: each round's own warm-up and cosine decay, rebuilt from its saved boundaries."""
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), [
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--lr_scheduler_type", "cosine",
        "--warmup_steps", "0.25", "--learning_rate", "1e-3", "--epochs_per_round", "2"])
    result = train_main(*args)
    lrs = _learning_rates(out)
    for rec in result.rounds:
        start, steps = rec["global_step"] - rec["train_steps"], rec["train_steps"]
        assert steps == round_steps(rec["pairs"], 2.0, 2)
        for s in range(steps):
            expected = cosine(s, math.ceil(0.25 * steps), steps, 1e-3)
            assert lrs[start + s + 1] == pytest.approx(expected, rel=1e-6, abs=1e-12), (rec["round"], s)
