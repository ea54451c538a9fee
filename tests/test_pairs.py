"""The AutoIF pair rule on hand-made pass rates: thresholds, caps, skips, determinism.

Run: python -m pytest tests/test_pairs.py -q
"""

import pytest

from autoif_train.data.pairs import PairRule, build_round_pairs, select_pairs


def test_thresholds_chosen_at_half_rejected_only_at_zero():
    responses = ["a", "b", "c", "d", "e"]
    rates = [0.5, 0.49, 0.0, 1.0, 0.01]
    pairs = select_pairs(responses, rates, PairRule(max_chosen=10, max_rejected=10))
    # chosen: 0.5 and 1.0 (indices 0, 3); rejected: only exactly 0 (index 2); 0.49 and 0.01 are neither
    assert sorted(pairs) == [(0, 2), (3, 2)]


def test_caps_limit_pairs_to_m_times_n():
    responses = [f"r{i}" for i in range(8)]
    rates = [1.0, 1.0, 0.75, 0.5, 0.0, 0.0, 0.0, 0.0]
    pairs = select_pairs(responses, rates, PairRule(max_chosen=2, max_rejected=2), seed=3)
    assert len(pairs) == 4
    chosen = {c for c, _ in pairs}
    rejected = {r for _, r in pairs}
    assert len(chosen) == 2 and chosen <= {0, 1, 2, 3}
    assert len(rejected) == 2 and rejected <= {4, 5, 6, 7}
    assert pairs == select_pairs(responses, rates, PairRule(max_chosen=2, max_rejected=2), seed=3)  # seeded
    assert len(select_pairs(responses, rates, PairRule(max_chosen=3, max_rejected=1), seed=3)) == 3


def test_length_ranking_keeps_the_longest_chosen_and_the_shortest_rejected():
    # 4 passing and 4 failing answers of different lengths; random pairs would often prefer the shorter answer
    responses = ["ok", "a longer passing answer", "mid answer", "the longest passing answer of all",
                 "a long failing answer here", "no", "bad one", "the longest failing answer of them all"]
    rates = [1.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0]
    pairs = select_pairs(responses, rates, PairRule(ranking="length"), seed=3)
    assert pairs == [(1, 5), (1, 6), (3, 5), (3, 6)]
    assert all(len(responses[c]) > len(responses[r]) for c, r in pairs)
    assert pairs == select_pairs(responses, rates, PairRule(ranking="length"), seed=99)  # no seed involved
    # with no choice left by the caps, length ranking changes nothing
    assert select_pairs(responses[:2] + responses[4:6], [1.0, 1.0, 0.0, 0.0], PairRule(ranking="length")) == \
        select_pairs(responses[:2] + responses[4:6], [1.0, 1.0, 0.0, 0.0], PairRule())


@pytest.mark.parametrize("rates", [[1.0, 0.5, 0.75], [0.0, 0.0, 0.0], [0.25, 0.3, 0.0], [0.25, 0.6, 0.4]])
def test_prompt_without_both_sides_is_skipped(rates):
    # each list lacks a chosen (>= 0.5) or a rejected (== 0) response
    assert select_pairs(["x", "y", "z"], rates) == []


def test_duplicate_texts_count_once():
    # the same text twice must not make a pair with itself or double the pairs
    pairs = select_pairs(["same", "same", "bad"], [1.0, 1.0, 0.0], PairRule(max_chosen=2, max_rejected=2))
    assert pairs == [(0, 2)]


def _records(prompts):
    """Sample records for [(prompt_id, [(text, finish_reason), ...]), ...]; completion ids are fake but distinct."""
    out = []
    for p, (pid, samples) in enumerate(prompts):
        for k, (text, finish) in enumerate(samples):
            out.append({"prompt_index": p, "prompt_id": pid, "sample_index": k, "text": text,
                        "completion_ids": [p, k, 99], "finish_reason": finish, "num_tokens": 3})
    return out


def test_round_pairs_and_counts():
    samples = _records([("p1", [("a", "stop"), ("b", "stop")]), ("p2", [("c", "stop"), ("d", "stop")]),
                        ("p3", [("e", "stop"), ("f", "stop"), ("g", "stop")])])
    pairs, stats = build_round_pairs(samples, [1.0, 0.0, 0.5, 0.25, 0.0, 0.5, 1.0])
    assert (stats.prompts, stats.prompts_with_pair, stats.skipped, stats.pairs) == (3, 2, 1, 3)
    assert stats.pair_share == pytest.approx(2 / 3)
    assert {p["prompt_id"] for p in pairs} == {"p1", "p3"}
    for p in pairs:
        assert p["chosen_pass_rate"] >= 0.5 and p["rejected_pass_rate"] == 0.0
        # the pair carries the sampled token ids of exactly those two samples
        assert p["chosen_ids"] == [p["prompt_index"], p["chosen_sample"], 99]
        assert p["rejected_ids"] == [p["prompt_index"], p["rejected_sample"], 99]


def test_unscored_samples_join_no_pair():
    # every verifier returned None for "b": pass rate None, so it is neither rejected nor chosen
    samples = _records([("p", [("a", "stop"), ("b", "stop"), ("c", "stop")])])
    pairs, _ = build_round_pairs(samples, [1.0, None, 0.0])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "c")]
    assert build_round_pairs(samples[:2], [1.0, None])[0] == []  # without "c" there is no rejected


@pytest.mark.parametrize("mode, expected", [
    ("exclude", [("ok", "bad")]),                       # the cut sample that passes is never chosen
    ("penalize", [("ok", "bad"), ("ok", "cut")]),       # cut = pass rate 0: rejected only
    ("keep", [("ok", "bad"), ("cut", "bad")]),          # scored like any other sample
])
def test_truncated_samples(mode, expected):
    samples = _records([("p", [("ok", "stop"), ("cut", "length"), ("bad", "stop")])])
    pairs, _ = build_round_pairs(samples, [1.0, 1.0, 0.0], PairRule(truncated=mode))
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == sorted(expected)
    assert all(p["rejected_pass_rate"] == 0.0 for p in pairs)


def test_bad_rule_and_mismatched_lengths():
    with pytest.raises(ValueError, match="rejected_threshold"):
        PairRule(chosen_threshold=0.3, rejected_threshold=0.5)
    with pytest.raises(ValueError, match="pass rates"):
        select_pairs(["a"], [1.0, 0.0])
    with pytest.raises(ValueError, match="truncated_samples"):
        PairRule(truncated="drop")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_online_rounds_and_synth_export_make_the_same_pairs(seed):
    """The same scored responses through online DPO's round pairs and `autoif synth`'s offline DPO export: one rule,
    the same pairs (identical texts once, a seeded subset when more qualify than the caps, unscored left out)."""
    from autoif_train.synth import export
    from autoif_train.synth.config import SynthConfig

    scored = [("A", 1.0), ("A", 1.0), ("B", 0.5), ("C", 0.75), ("D", 0.0), ("E", 0.0), ("F", 0.0), ("G", 0.25),
              ("H", None), ("D", 0.0)]
    samples = _records([("q1", [(t, "stop") for t, _ in scored])])
    online, _ = build_round_pairs(samples, [r for _, r in scored], PairRule(), seed=seed)
    row = {"id": "q1", "prompt": "P", "responses": [
        {"text": t, "pass_rate": r or 0.0, **({"unscored": True} if r is None else {})} for t, r in scored]}
    offline = export.query_pairs([row], SynthConfig(seed=seed, quality_filter=False))
    assert len(online) == 4
    assert [(p["chosen"], p["rejected"]) for p in online] == [
        (p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in offline]
