"""Rollouts that users' configurations produce: eos != end-of-turn, samples cut at max_new_tokens, verifiers that
time out, shares that do not divide by the world size, and one sampling semantics on every backend.

Run: python -m pytest tests/test_rollouts.py -q          (the 2-rank ZeRO-3 test is marked slow)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoif_train.configs import parse_recipe
from autoif_train.generation.base import GenerationConfig, transformers_kwargs, vllm_kwargs
from autoif_train.generation.chat import encode_prompt, end_of_turn_ids, make_completion
from autoif_train.train import main as train_main
from autoif_train.training.rollouts import equal_shares

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "online_dpo.yaml"
TIMEOUT_VERIFIER = "def evaluate(response):\n    while True:\n        pass\n"
LONG_PASSES = "def evaluate(response):\n    return len(response) >= 12\n"  # any text cut at 8 tokens passes


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _llama3_tokenizer(save_dir: Path):
    """A Llama-3-style tokenizer: eos <|end_of_text|>, turns end with <|eot_id|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world, how are you today?"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' "
        "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    fast.save_pretrained(save_dir)
    return fast


def test_end_of_turn_ids_are_the_union_of_eos_generation_config_and_template(eot_model_dir, tmp_path):
    from transformers import AutoTokenizer
    from transformers import GenerationConfig as HFGenerationConfig

    qwen = AutoTokenizer.from_pretrained(str(eot_model_dir))  # eos <|endoftext|>, template ends with <|im_end|>
    im_end, eos = qwen.convert_tokens_to_ids("<|im_end|>"), qwen.eos_token_id
    assert eos != im_end
    assert end_of_turn_ids(qwen) == sorted({eos, im_end})
    assert end_of_turn_ids(qwen, HFGenerationConfig(eos_token_id=[7, eos]), extra=[9]) == sorted({eos, im_end, 7, 9})

    llama3 = _llama3_tokenizer(tmp_path / "llama3")
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_ids(llama3) == sorted({llama3.eos_token_id, eot})


def test_completion_is_cut_after_the_first_stop_id_and_knows_why(eot_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(eot_model_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    hello = tok("hello", add_special_tokens=False)["input_ids"]
    stopped = make_completion(tok, hello + [im_end, 5, 6, tok.pad_token_id], [im_end], max_new_tokens=8)
    assert (stopped.token_ids, stopped.finish_reason, stopped.text) == (hello + [im_end], "stop", "hello")
    cut = make_completion(tok, hello * 8, [im_end], max_new_tokens=len(hello) * 8)
    assert cut.finish_reason == "length" and cut.truncated and cut.num_tokens == len(hello) * 8


def test_sampling_stops_at_the_chat_end_of_turn_not_only_at_eos(eot_model_dir):
    """The transformers backend and the policy sampler share `sample_completions`: it must stop at <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.generation.transformers_backend import sample_completions

    tok = AutoTokenizer.from_pretrained(str(eot_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(eot_model_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    stops = end_of_turn_ids(tok, model.generation_config)
    prompts = [encode_prompt(tok, [{"role": "user", "content": f"Write a short poem {i}."}]) for i in range(4)]
    out = sample_completions(model, tok, prompts, GenerationConfig(n=8, temperature=1.0, max_new_tokens=8, seed=0),
                             stops, batch_size=4, device="cpu")
    flat = [c for row in out for c in row]
    assert sum(c.finish_reason == "stop" for c in flat) >= 8  # the model ends its turn often
    for c in flat:
        if im_end in c.token_ids:  # sampling ended there: nothing invented after the end of turn
            assert c.token_ids.index(im_end) == len(c.token_ids) - 1 and c.finish_reason == "stop"
        else:
            assert c.finish_reason == "length" and c.num_tokens == 8


def test_transformers_and_vllm_settings_have_the_same_semantics(tiny_model_dir):
    """top_k 0 means off on both backends (transformers' own default is 50), and both stop on the same ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    cfg = GenerationConfig(n=1, temperature=0.7, top_p=1.0, top_k=0, min_p=0.0, max_new_tokens=4, seed=0)
    stops = [1, 2]
    kwargs = transformers_kwargs(cfg, stops, pad_token_id=0)
    merged = copy.deepcopy(model.generation_config)
    merged.update(**kwargs)  # what generate() does with the keywords
    processors = model._get_logits_processor(merged, input_ids_seq_length=3, device="cpu")
    names = {type(p).__name__ for p in processors}
    assert "TopKLogitsWarper" not in names and "MinPLogitsWarper" not in names, names
    logits = torch.randn(1, model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    processed = logits.clone()
    for proc in processors:
        processed = proc(torch.zeros(1, 3, dtype=torch.long), processed)
    # the whole vocabulary stays reachable, with softmax(logits / T) probabilities, as vLLM samples with top_k=0
    torch.testing.assert_close(processed.log_softmax(-1), (logits / 0.7).log_softmax(-1))
    assert list(merged.eos_token_id) == stops
    v = vllm_kwargs(cfg, stops)
    assert (v["top_k"], v["top_p"], v["min_p"], v["temperature"], v["stop_token_ids"], v["max_tokens"]) == (
        0, 1.0, 0.0, 0.7, stops, 4)
    # with top_k set, transformers keeps exactly k tokens, as vLLM does
    merged.update(**transformers_kwargs(GenerationConfig(temperature=1.0, top_k=5), stops, 0))
    processors = model._get_logits_processor(merged, input_ids_seq_length=3, device="cpu")
    processed = logits.clone()
    for proc in processors:
        processed = proc(torch.zeros(1, 3, dtype=torch.long), processed)
    assert int(torch.isfinite(processed).sum()) == 5


@pytest.mark.parametrize("n, world", [(7, 2), (110, 8), (3, 4), (64, 64), (1, 1)])
def test_equal_shares_cover_every_prompt_once(n, world):
    shares = equal_shares(n, world)
    per = -(-n // world)
    assert all(len(s) == per for s in shares)
    flat = [i for s in shares for i in s]
    assert flat[:n] == list(range(n)) and all(i == n - 1 for i in flat[n:])


def _write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_round_records_exclude_truncated_and_unscored_samples(eot_model_dir, tmp_path):
    """One online round on a model whose eos differs from its end of turn, with a verifier that any cut sample
    passes and one that always times out: no chosen sample is truncated, no pair uses an unscored sample."""
    prompts = _write_prompts(tmp_path / "prompts.jsonl", [
        {"id": f"q{i}", "prompt": f"Write a short poem about the sea {i}.", "verifiers": [LONG_PASSES]}
        for i in range(4)] + [
        {"id": "both", "prompt": "Explain photosynthesis.", "verifiers": [LONG_PASSES, TIMEOUT_VERIFIER]},
        {"id": "dead", "prompt": "Give three tips.", "verifiers": [TIMEOUT_VERIFIER]},
    ])
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), [
        "--model_name_or_path", str(eot_model_dir), "--output_dir", str(out), "--dataset_path", str(prompts),
        "--num_rounds", "1", "--prompts_per_round", "6", "--num_samples", "6", "--truncated_samples", "exclude",
        "--verifier_timeout", "0.5"])
    result = train_main(*args)
    folder = out / "rounds" / "round_0000"
    samples, scores, pairs = (_jsonl(folder / f"{n}.jsonl") for n in ("samples", "scores", "pairs"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(eot_model_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    by_slot = {(s["prompt_id"], s["sample_index"]): s for s in samples}
    score_of = {(s["prompt_id"], s["sample_index"]): s for s in scores}

    # end of turn: a sample that sampled <|im_end|> stops there (the tokenizer's eos is <|endoftext|>)
    stopped = [s for s in samples if s["finish_reason"] == "stop"]
    assert stopped and all(s["completion_ids"][-1] == im_end for s in stopped if im_end in s["completion_ids"])
    assert all(im_end not in s["completion_ids"][:-1] for s in samples)
    cut = [s for s in samples if s["finish_reason"] == "length"]
    assert cut and all(s["num_tokens"] == 8 for s in cut)

    # truncation: cut samples pass LONG_PASSES (the test is meaningful), yet none is ever chosen
    assert any(score_of[(s["prompt_id"], s["sample_index"])]["pass_rate"] == 1.0 for s in cut)
    assert pairs == [] or all(by_slot[(p["prompt_id"], p["chosen_sample"])]["finish_reason"] == "stop"
                              for p in pairs)

    # unscored: "dead" has only the timing-out verifier -> every sample unscored, in no pair
    dead = [sc for sc in scores if sc["prompt_id"] == "dead"]
    assert all(sc["pass_rate"] is None and sc["results"] == [None] for sc in dead)
    assert not [p for p in pairs if p["prompt_id"] == "dead"]
    both = [sc for sc in scores if sc["prompt_id"] == "both"]  # the honest verifier still decides
    assert all(sc["results"][1] is None and sc["pass_rate"] in (0.0, 1.0) for sc in both)

    rec = result.rounds[0]
    assert rec["samples"] == 36 and rec["unscored_samples"] == 6
    assert rec["unscored_share"] == pytest.approx(6 / 36)
    assert rec["clipped_ratio"] == pytest.approx(len(cut) / 36)
    assert rec["eos_share"] == pytest.approx(len(stopped) / 36)
    assert rec["mean_completion_tokens"] == pytest.approx(sum(s["num_tokens"] for s in samples) / 36)


def test_overlength_prompts_are_skipped_and_counted(tiny_model_dir, tmp_path):
    """A prompt longer than the model's positions (512) leaves the round running: skipped on every rank, counted in
    the round's plan and record, never sampled; the held-out set skips it too."""
    long_prompt = "tell me about the sea and the sky " * 120
    rows = [{"id": f"q{i}", "prompt": f"Write a short poem about the sea {i}.", "verifiers": [LONG_PASSES]}
            for i in range(3)]
    rows.insert(1, {"id": "long", "prompt": long_prompt, "verifiers": [LONG_PASSES]})
    prompts = _write_prompts(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), [
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--dataset_path", str(prompts),
        "--num_rounds", "1", "--prompts_per_round", "4", "--num_samples", "2", "--max_new_tokens", "8"])
    result = train_main(*args)
    folder = out / "rounds" / "round_0000"
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["overlength_prompts"] == 1 and plan["prompt_end"] == 4 and plan["prompts"] == 4
    assert {s["prompt_id"] for s in _jsonl(folder / "samples.jsonl")} == {"q0", "q1", "q2"}
    assert result.rounds[0]["overlength_prompts"] == 1


def _greedy_reference(model_dir: Path, rows: list[dict], max_new_tokens: int) -> list[str]:
    """Single-process greedy completions (top_k=1) of `rows`, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.generation.transformers_backend import sample_completions

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    stops = end_of_turn_ids(tok, model.generation_config)
    cfg = GenerationConfig(n=1, temperature=1.0, top_k=1, max_new_tokens=max_new_tokens, seed=0)
    return [sample_completions(model, tok, [encode_prompt(tok, [{"role": "user", "content": r["prompt"]}])], cfg,
                               stops, 1, "cpu")[0][0].text for r in rows]


def distinct_prompt_rows(n: int) -> list[dict]:
    """Prompt rows that differ in topic, wording and length (an always-true verifier each)."""
    topics = ["the sea", "a fox", "sleep", "bananas", "Paris", "the river", "photosynthesis", "capital letters"]
    verbs = ["Write about", "Explain", "ALL CAPS:", "Give three tips on", "1 2 3"]
    return [{"id": f"u{i}", "prompt": f"{verbs[(i // len(topics)) % len(verbs)]} {topics[i % len(topics)]}, " * (i % 4 + 1),
             "verifiers": ["def evaluate(response):\n    return True\n"]} for i in range(n)]


@pytest.mark.slow
def test_uneven_shares_on_two_zero3_ranks_keep_every_response_under_its_prompt(tiny_model_dir, tmp_path):
    """7 prompts on 2 DeepSpeed ZeRO-3 ranks (shares 4 + 3): greedy (top_k=1) samples must equal the single-process
    greedy completion of their own prompt."""
    rows = distinct_prompt_rows(7)
    prompts = _write_prompts(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "run"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
           "-m", "autoif_train.train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir),
           "--output_dir", str(out), "--dataset_path", str(prompts), "--num_rounds", "1", "--prompts_per_round", "7",
           "--num_samples", "2", "--top_k", "1", "--max_new_tokens", "12"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    samples = _jsonl(out / "rounds" / "round_0000" / "samples.jsonl")
    assert [(s["prompt_id"], s["sample_index"]) for s in samples] == [(r["id"], k) for r in rows for k in range(2)]
    expected = _greedy_reference(tiny_model_dir, rows, 12)
    assert len(set(expected)) == len(expected), "reference completions must tell the prompts apart"
    got = {s["prompt_id"]: s["text"] for s in samples if s["sample_index"] == 0}
    assert [got[r["id"]] for r in rows] == expected
