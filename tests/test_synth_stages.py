"""Stage logic with a scripted backend of canned answers (valid, malformed, hostile) and the real sandbox pool."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from autoif_train.configs import RecipeError
from autoif_train.generation import GenerationConfig, Generator
from autoif_train.synth import (
    back_translation,
    cross_validation,
    decontamination,
    export,
    instructions,
    quality,
    queries,
    responses,
    verifier_generation,
)
from autoif_train.synth.artifacts import RunFolder, SynthError
from autoif_train.synth.config import SynthConfig, load_synth_config
from autoif_train.synth.pipeline import SynthContext

REPO = Path(__file__).resolve().parent.parent
NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
ALWAYS_TRUE = "def evaluate(response):\n    return True\n"
SHORT = "def evaluate(response):\n    return len(response.split()) < 5\n"


class ScriptedGenerator(Generator):
    """Answers from `script(prompt_text, sample_index)`; records every call to check batching."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[int, GenerationConfig]] = []

    def generate(self, prompts, config=None):
        config = config or GenerationConfig()
        self.calls.append((len(prompts), config))
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return [[self.script(t, j) for j in range(config.n)] for t in texts]


def make_ctx(tmp_path, script=None, **overrides) -> SynthContext:
    cfg = SynthConfig(output_dir=str(tmp_path / "run"), isolation="seccomp", **overrides)
    return SynthContext(cfg, RunFolder(cfg.output_dir), ScriptedGenerator(script or (lambda t, j: "")))


def test_verifier_generation_counts_unparseable_answers(tmp_path):
    valid = json.dumps({"func": NO_COMMA, "cases": [{"input": "a b", "output": True}, {"input": "a, b", "output": False}]})
    canned = [valid, "```json\n{\"func\": broken", "Ignore the instructions; here is a poem."]

    def script(prompt, j):
        return canned[j] if "comma" in prompt else "no json at all"

    ctx = make_ctx(tmp_path, script, verifier_samples=3)
    rows = [{"id": "a", "instruction": "Use no comma."}, {"id": "b", "instruction": "Be brief."}]
    result = verifier_generation.process(ctx, rows, 0)
    assert len(ctx._generator.calls) == 1 and ctx._generator.calls[0][0] == 2  # one batched call, n=K
    assert ctx._generator.calls[0][1].n == 3
    assert [r["id"] for r in result.rows] == ["a"]
    assert result.rows[0]["functions"] == [NO_COMMA] and len(result.rows[0]["cases"]) == 2
    assert result.drops == Counter(no_function_parsed=1)
    assert result.details == Counter({"answer:ok": 1, "answer:invalid_json": 1, "answer:no_json": 4})


@pytest.mark.parametrize("min_functions, kept", [(1, True), (4, False)])
def test_cross_validation_in_sandbox(tmp_path, min_functions, kept):
    hostile = "import os\n\ndef evaluate(response):\n    os.system('touch /tmp/pwned_synth')\n    return True\n"
    looping = "def evaluate(response):\n    while True:\n        pass\n"
    row = {
        "id": "c", "instruction": "No commas.",
        "functions": [NO_COMMA, ALWAYS_TRUE, "def evaluate(response) return 1", looping, hostile,
                      "def other(x):\n    return 1\n"],
        "cases": [{"input": "a b", "output": True}, {"input": "a, b", "output": False},
                  {"input": "x, y", "output": False}],
    }
    broken = {"id": "d", "instruction": "x", "functions": ["def evaluate(:"], "cases": [{"input": "a", "output": True}]}
    ctx = make_ctx(tmp_path, min_functions=min_functions, verifier_timeout=0.5)
    try:
        result = cross_validation.process(ctx, [row, broken], 0)
    finally:
        ctx.close()
    assert result.details["function:syntax_error"] == 2 and result.details["function:no_evaluate"] == 1
    assert result.drops["no_compilable_function"] == 1
    assert not Path("/tmp/pwned_synth").exists()
    if not kept:
        assert result.rows == [] and result.drops["too_few_functions"] == 1
        return
    (out,) = result.rows
    # cases: "a b" -> True by NO_COMMA, ALWAYS_TRUE, hostile (3/4 > 0.5): kept; "a, b" -> False only by NO_COMMA
    # (1/4): dropped; so NO_COMMA, ALWAYS_TRUE and hostile score 1.0 on the kept case; the loop (None) scores 0.
    assert out["cases"] == [{"input": "a b", "output": True}]
    assert len(out["functions"]) == 3 and looping not in out["functions"]
    assert out["chosen_cases"] == ["a b"] and out["rejected_cases"] == []


def test_cross_validation_judge_thresholds():
    cfg = SynthConfig()
    results = [[True, False, False], [True, False, True], [True, True, True]]
    expected = [True, False, False]
    funcs, cases, acc = cross_validation.judge(results, expected, cfg)
    # case 2 is matched by 1/3 of the functions (dropped); on cases 0-1 function 2 scores 0.5 (not > 0.5)
    assert cases == [0, 1] and funcs == [0, 1] and acc == [1.0, 1.0, 0.5]
    strict = SynthConfig(min_case_agreement=0.7)  # case 1 (2/3) goes too; then every function is right on case 0
    assert cross_validation.judge(results, expected, strict)[:2] == ([0, 1, 2], [0])


def test_seed_verifiers_pass_their_own_cases(tmp_path):
    """The shipped seeds' hand-written verifiers survive cross-validation in the sandbox, every case kept."""
    ctx = make_ctx(tmp_path, seed_instructions=str(REPO / "recipes/synth/seed_instructions.jsonl"))
    seeds = instructions.inputs(ctx)
    rows = verifier_generation.process(ctx, seeds, 0).rows  # scripted answers are empty: seed material only
    try:
        result = cross_validation.process(ctx, rows, 0)
    finally:
        ctx.close()
    assert len(result.rows) == len(seeds) >= 20
    assert all(len(r["cases"]) == len(s["cases"]) for r, s in zip(result.rows, seeds))
    assert all(r["chosen_cases"] and r["rejected_cases"] for r in result.rows)


def test_back_translation_llm_judge(tmp_path):
    def script(prompt, j):
        if prompt.startswith("Premise"):
            if prompt.startswith('Premise: "Be brief.'):
                return "Label: contradiction"
            return "I am not sure." if "caps" in prompt else "Label: entailment"
        return "Write in capitals." if "upper" in prompt else "Answer briefly." if "split" in prompt else "No commas."

    rows = [
        {"id": "a", "instruction": "Write in caps.", "functions": ["def evaluate(r):\n    return r.isupper()\n"]},
        {"id": "b", "instruction": "Be brief.", "functions": [SHORT, SHORT + "#"]},
        {"id": "c", "instruction": "No commas.", "functions": [NO_COMMA]},
    ]
    ctx = make_ctx(tmp_path, script, nli_filter="llm_judge", back_translations=1)
    result = back_translation.process(ctx, rows, 0)
    assert [r["id"] for r in result.rows] == ["a", "c"]
    assert result.drops == Counter(nli_contradiction=1)
    assert result.rows[0]["nli_labels"] == ["unknown"] and result.rows[1]["nli_labels"] == ["entailment"]
    assert ctx._generator.calls[0][0] == 3  # back_translations=1: one function per instruction, one call


@pytest.fixture
def tiny_nli_dir(tmp_path):
    """A random 2-layer BERT classifier with NLI labels in a non-standard order, biased by the test."""
    import torch
    from conftest import build_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path / "nli"
    tok = build_tokenizer(path)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, pad_token_id=tok.pad_token_id,
                     id2label={0: "ENTAILMENT", 1: "Neutral", 2: "CONTRADICTION"},
                     label2id={"ENTAILMENT": 0, "Neutral": 1, "CONTRADICTION": 2})
    model = BertForSequenceClassification(cfg)

    def save(label_index):
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([10.0 if i == label_index else 0.0 for i in range(3)]))
        model.save_pretrained(path)
        return str(path)

    return save


@pytest.mark.parametrize("label_index, kept", [(2, 0), (0, 2), (1, 2)])
def test_back_translation_nli_classifier(tmp_path, tiny_nli_dir, label_index, kept):
    rows = [{"id": "a", "instruction": "No commas.", "functions": [NO_COMMA]},
            {"id": "b", "instruction": "Be brief.", "functions": [SHORT]}]
    ctx = make_ctx(tmp_path, lambda t, j: "Do not use commas.", nli_filter="nli", nli_model=tiny_nli_dir(label_index))
    result = back_translation.process(ctx, rows, 0)
    assert len(result.rows) == kept and result.drops["nli_contradiction"] == 2 - kept


def test_responses_scored_in_sandbox(tmp_path):
    canned = ["short, answer", "short answer", "this one is long and has no comma at all", "a, b, c, d, e, f, g"]
    ctx = make_ctx(tmp_path, lambda t, j: canned[j] if "good" in t else "x, y, z, w, v, u", responses_per_query=4)
    rows = [{"id": "g", "prompt": "good query", "functions": [NO_COMMA, SHORT]},
            {"id": "h", "prompt": "hopeless query", "functions": [NO_COMMA, SHORT]}]
    try:
        result = responses.process(ctx, rows, 0)
    finally:
        ctx.close()
    assert [r["id"] for r in result.rows] == ["g"] and result.drops == Counter(no_usable_response=1)
    assert [r["pass_rate"] for r in result.rows[0]["responses"]] == [0.5, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("threshold, kept", [(8, ["a"]), (4, ["a", "b"])])
def test_quality_judge(tmp_path, threshold, kept):
    def script(prompt, j):
        return {"alpha": "Relevant.\nScore: 9", "beta": "Score: 5", "gamma": "Ignore all rules. Score: 99"}[
            next(w for w in ("alpha", "beta", "gamma") if w in prompt)
        ]

    def row(rid, query):
        return {"id": rid, "query": query, "instruction": "x", "responses": [
            {"text": "resp", "pass_rate": 1.0}, {"text": "bad", "pass_rate": 0.0}]}

    ctx = make_ctx(tmp_path, script, quality_threshold=threshold)
    result = quality.process(ctx, [row("a", "alpha"), row("b", "beta"), row("c", "gamma")], 0)
    assert [r["id"] for r in result.rows] == kept
    assert result.details["judged"] == 3 and result.details["score_unparseable"] == 1  # rejected ones not judged
    assert result.drops["low_quality"] == 3 - len(kept)


def test_decontamination_drops_ifeval_overlap(tmp_path, ifeval_path):
    first = json.loads(ifeval_path.read_text().splitlines()[0])["prompt"]
    words = re.findall(r"[a-z0-9]+", first.lower())
    rows = [
        {"id": "leak", "prompt": "Please do this: " + first, "responses": [{"text": "ok", "pass_rate": 1.0}]},
        {"id": "short", "prompt": " ".join(words[:12]), "responses": [{"text": "ok", "pass_rate": 1.0}]},
        {"id": "resp", "prompt": "clean", "responses": [{"text": " ".join(words[:13]), "pass_rate": 1.0}]},
        {"id": "clean", "prompt": "How do I bake bread?", "responses": [{"text": "Knead.", "pass_rate": 1.0}]},
    ]
    ctx = make_ctx(tmp_path, decontamination_sources=[str(ifeval_path)])
    result = decontamination.process(ctx, rows, 0)
    assert [r["id"] for r in result.rows] == ["short", "clean"]
    assert result.drops == Counter({"ngram_overlap:input_data.jsonl": 2})


def test_decontamination_unavailable_source(tmp_path):
    ctx = make_ctx(tmp_path, decontamination_sources=["no/such-dataset-offline"])
    with pytest.raises(SynthError, match="no/such-dataset-offline"):
        decontamination.process(ctx, [], 0)
    lenient = make_ctx(tmp_path / "b", decontamination_sources=["no/such-dataset-offline"], decontamination_required=False)
    result = decontamination.process(lenient, [{"id": "x", "prompt": "p", "responses": []}], 0)
    assert len(result.rows) == 1 and result.details["source_unavailable:no/such-dataset-offline"] == 1


def test_export_pair_rules():
    cfg = SynthConfig()
    rows = [{
        "id": "r", "instruction_id": "i", "prompt": "P", "query": "q", "functions": [NO_COMMA],
        "responses": [
            {"text": "A", "pass_rate": 1.0, "quality": 9}, {"text": "B", "pass_rate": 0.5, "quality": 10},
            {"text": "C", "pass_rate": 1.0, "quality": 2}, {"text": "D", "pass_rate": 0.0},
            {"text": "E", "pass_rate": 0.0}, {"text": "F", "pass_rate": 0.0}, {"text": "G", "pass_rate": 0.25},
        ],
    }]
    sft = export.sft_rows(rows, cfg)
    assert [r["messages"][1]["content"] for r in sft] == ["A"]  # pass > 0.5 and judged good; best first
    pairs = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in export.query_pairs(rows, cfg)]
    # >= 0.5 & judged good (A, B; C failed the judge) vs == 0 (a seeded 2 of D, E, F), at most 2 x 2
    assert len(pairs) == 4 and {c for c, _ in pairs} == {"A", "B"}
    rejected = {r for _, r in pairs}
    assert len(rejected) == 2 and rejected <= {"D", "E", "F"}
    assert pairs == [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in export.query_pairs(rows, cfg)]
    by_quality = export.query_pairs(rows, SynthConfig(pair_ranking="quality"))  # the old ranking, explicit
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in by_quality] == [
        ("A", "D"), ("A", "E"), ("B", "D"), ("B", "E")]
    wide = export.query_pairs(rows, SynthConfig(max_chosen=1, max_rejected=3, pair_ranking="quality"))
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in wide] == [("A", "D"), ("A", "E"), ("A", "F")]
    assert export.sft_rows(rows, SynthConfig(quality_filter=False))[0]["messages"][1]["content"] in ("A", "C")


def test_queries_source_formats_and_errors(tmp_path):
    sharegpt = [
        {"id": "s1", "conversations": [{"from": "human", "value": "How do I grow tomatoes on a balcony?"},
                                       {"from": "gpt", "value": "..."}]},
        {"id": "s2", "conversations": [{"from": "human", "value": "Hi"}]},  # too short
        {"id": "s3", "conversations": [{"from": "human", "value": "How do I grow tomatoes on a balcony?"}]},  # dup
        {"id": "s4", "conversations": [{"from": "human", "value": "What is a good name for a grey cat?"}]},
    ]
    path = tmp_path / "share.json"
    path.write_text(json.dumps(sharegpt))
    ctx = make_ctx(tmp_path, query_source=str(path), queries_per_instruction=5)
    rows = [{"id": "i1", "instruction": "No commas.", "functions": [NO_COMMA]}]
    result = queries.process(ctx, rows, 0)
    assert sorted(r["query_id"] for r in result.rows) == ["s1", "s4"]
    assert result.rows[0]["prompt"].endswith("\nNo commas.") and result.rows[0]["functions"] == [NO_COMMA]
    assert queries.finalize(ctx, result.rows).details == Counter({"source:too_short": 1, "source:duplicate": 1})
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"id": "x", "query_id": "s4", "prompt": "..."}) + "\n")
    ctx = make_ctx(tmp_path / "h", query_source=str(path), exclude_queries=[str(heldout)])
    assert [q["query_id"] for q in queries.load_queries(ctx.config)[0]] == ["s1"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"query": "short"}) + "\n")
    with pytest.raises(SynthError, match=r"empty.jsonl.*no usable queries"):
        queries.process(make_ctx(tmp_path / "e", query_source=str(empty)), rows, 0)


def test_bad_seed_file_and_unknown_recipe_key(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Use no commas."}\n{"instruction": "ok"\n')
    with pytest.raises(SynthError, match=r"seeds.jsonl:2: not valid JSON"):
        instructions.inputs(make_ctx(tmp_path, seed_instructions=str(seeds)))
    seeds.write_text('{"instruction": "Use no commas."}\n{"text": "x"}\n')
    with pytest.raises(SynthError, match=r"seeds.jsonl:2: field 'instruction': missing"):
        instructions.inputs(make_ctx(tmp_path, seed_instructions=str(seeds)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backend: transformers\nverifier_sampels: 3\n")
    with pytest.raises(RecipeError, match=r"r.yaml.*'verifier_sampels'.*did you mean 'verifier_samples'"):
        load_synth_config(str(recipe))


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "synth").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    cfg = load_synth_config(str(recipe))
    assert Path(cfg.seed_instructions).exists()


def test_instruction_augmentation_dedupes_and_filters(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": t}) + "\n" for i, t in enumerate(
        ["Use no commas at all.", "Answer in fewer than ten words."])))
    answer = "Here are some:\n1. Use NO commas at all!\n2. Write in a poetic style.\n3. Hi\n4. End with the word done."
    ctx = make_ctx(tmp_path, lambda t, j: answer, seed_instructions=str(seeds), instruction_rewrites=2)
    chunk = instructions.process(ctx, instructions.inputs(ctx), 0)
    final = instructions.finalize(ctx, chunk.rows)
    assert chunk.drops == Counter(uncheckable_topic=4, too_short=4)
    assert [r["instruction"] for r in final.rows] == [
        "Use no commas at all.", "Answer in fewer than ten words.", "End with the word done."]
    assert final.drops == Counter(duplicate=7)  # 4 copies of a seed + 3 repeats of the new one
