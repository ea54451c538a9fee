"""vLLM for real on CPU: an online-DPO run sampling through vLLM, weight sync checked by log-probs, the synthesis backend.

Run (in the vLLM environment): .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py -q

vLLM keeps per-process distributed state, so each scenario runs in a fresh interpreter (this file run as a script,
`python tests/test_vllm_engine.py SCENARIO OUT.json`), once per module; the tests assert on what it reports.
The tiny model here has head_dim 32 (vLLM's CPU attention supports 32..512, the conftest model has 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.vllm, pytest.mark.slow]
FIXED_COMPLETION = "Yes, the capital of France is Paris."


def build_vllm_tiny_model(save_dir: Path, hidden_size: int = 64) -> Path:
    """A 2-layer random Llama (heads of 32, hidden 64 by default) + the conftest tokenizer, loadable by vLLM on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tokenizer

    save_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(save_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=hidden_size // 32, num_key_value_heads=max(1, hidden_size // 128), head_dim=32, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(save_dir)
    return save_dir


def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """Per-token log-probs of `completion_ids` after `prompt_ids` under a transformers model."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0, :-1].float()
        logp = torch.log_softmax(logits, -1)
    start = len(prompt_ids) - 1
    return [logp[start + i, tok].item() for i, tok in enumerate(completion_ids)]


# ----- scenarios (run in a subprocess) ----------------------------------------------------------------------------
def scenario_online(work: Path, lora: bool = False) -> dict:
    """One online-DPO run (2 rounds) sampling with colocated vLLM; log-probs of a fixed completion around a sync."""
    from trl import get_peft_config

    from autoif_train.configs import parse_recipe
    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.generation.vllm_policy import VLLMPolicy
    from autoif_train.train import model_init_kwargs
    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    model_dir = build_vllm_tiny_model(work / "model")
    script_args, args, model_args = parse_recipe(
        str(ROOT / "recipes" / "tiny" / "online_dpo.yaml"),
        ["--model_name_or_path", str(model_dir), "--output_dir", str(work / "run"), "--use_vllm", "true",
         "--vllm_mode", "colocate", "--learning_rate", "5e-2"]
        + (["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "all-linear",
            "--vllm_sync_bucket_mb", "0"] if lora else []),
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    args.model_init_kwargs = model_init_kwargs(model_args)
    prompts = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle, script_args.dataset_split)
    trainer = AutoIFOnlineDPOTrainer(model=str(model_dir), args=args, prompts=prompts, processing_class=tokenizer,
                                     peft_config=get_peft_config(model_args))
    sampler = trainer.sampler
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(FIXED_COMPLETION, add_special_tokens=False)["input_ids"]
    report = {"sampler": type(sampler).__name__, "is_vllm_sampler": isinstance(sampler, VLLMPolicy)}
    report["before_vllm"] = sampler.sequence_logprobs(prompt_ids, completion_ids)
    report["before_hf"] = hf_logprobs(trainer.model, prompt_ids, completion_ids)
    trainer.train()  # trainer.close() (verifier pool, engine) only at the end: the checks below need the engine
    report["stale_vllm"] = sampler.sequence_logprobs(prompt_ids, completion_ids)
    sampler.sync_weights()
    report["after_vllm"] = sampler.sequence_logprobs(prompt_ids, completion_ids)
    report["after_hf"] = hf_logprobs(trainer.model, prompt_ids, completion_ids)
    report["rounds"] = trainer.store.completed()
    report["samples"] = [
        json.loads(line)
        for r in range(2)
        for line in (work / "run" / "rounds" / f"round_{r:04d}" / "samples.jsonl").read_text().splitlines()
    ]
    report["syncs"] = sampler.syncs
    report["last_sync"] = sampler.last_sync
    report["num_params"] = len(list(trainer.model.parameters()))
    report["peft"] = type(trainer.model).__name__
    trainer.close()
    return report


def scenario_online_lora(work: Path) -> dict:
    """The online scenario with a LoRA policy: adapters are merged for the push (and unmerged after)."""
    return scenario_online(work, lora=True)


def scenario_zero3(work: Path) -> dict:
    """Under `accelerate launch` with DeepSpeed ZeRO-3 (2 CPU ranks): one round, then a sync checked by log-probs."""
    import deepspeed
    from transformers import AutoTokenizer

    from autoif_train.configs import parse_recipe
    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.train import model_init_kwargs
    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    model_dir = work / "model"  # built by the test before launching
    script_args, args, model_args = parse_recipe(
        str(ROOT / "recipes" / "tiny" / "online_dpo.yaml"),
        ["--model_name_or_path", str(model_dir), "--output_dir", str(work / "run"), "--use_vllm", "true",
         "--num_rounds", "1", "--per_device_train_batch_size", "1", "--learning_rate", "5e-2"],
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    args.model_init_kwargs = model_init_kwargs(model_args)
    prompts = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle, script_args.dataset_split)
    trainer = AutoIFOnlineDPOTrainer(model=str(model_dir), args=args, prompts=prompts, processing_class=tokenizer)
    sampler, model = trainer.sampler, trainer.model
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(FIXED_COMPLETION, add_special_tokens=False)["input_ids"]
    trainer.train()  # trainer.close() (verifier pool, engine) only at the end: the checks below need the engine
    params = list(model.parameters())
    report = {
        "rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
        # ZeRO-3 keeps tensors below stage3_param_persistence_threshold (1e5 elements) whole on every rank
        "matrices": sum(len(getattr(p, "ds_shape", p.shape)) == 2 for p in params),
        "partitioned_matrices": sum(
            len(getattr(p, "ds_shape", p.shape)) == 2 and hasattr(p, "ds_id") and p.numel() == 0 for p in params
        ),
        "rounds": trainer.store.completed() if trainer.accelerator.is_main_process else None,
        "stale_vllm": sampler.sequence_logprobs(prompt_ids, completion_ids),
    }
    sampler.sync_weights()  # vllm_sync_bucket_mb: 512 (the default): the whole tiny model in one gather
    report["after_vllm"] = sampler.sequence_logprobs(prompt_ids, completion_ids)
    report["bucketed_gathers"] = sampler.last_sync["gathers"]
    sampler.generation.sync_bucket_mb = 0  # TRL's per-tensor gathers: must push exactly the same weights
    sampler.sync_weights()
    report["per_tensor_vllm"] = sampler.sequence_logprobs(prompt_ids, completion_ids)
    report["per_tensor_gathers"] = sampler.last_sync["gathers"]
    report["num_params"] = len(params)
    with deepspeed.zero.GatheredParameters(params):
        report["after_hf"] = hf_logprobs(model, prompt_ids, completion_ids)
    trainer.close()
    return report


def scenario_backend(work: Path) -> dict:
    """The synthesis backend through vLLM: batched sampling, greedy parity with transformers, context errors."""
    from autoif_train.generation import GenerationConfig, build_generator
    from autoif_train.generation.vllm_engine import ContextLengthError

    model_dir = build_vllm_tiny_model(work / "model")
    prompts = ["Write a short poem about the sea.", [{"role": "user", "content": "What is the capital of France?"}],
               "Explain photosynthesis in fewer than twenty words."]
    report = {}
    gen = build_generator("vllm", model=str(model_dir), max_model_len=128, progress=False)
    try:
        sampled = gen.generate(prompts, GenerationConfig(n=4, temperature=1.0, max_new_tokens=12))
        report["sampled"] = sampled
        report["greedy_vllm"] = gen.generate(prompts, GenerationConfig(n=2, temperature=0.0, max_new_tokens=12))
        try:
            gen.generate(["banana " * 200], GenerationConfig(n=1, max_new_tokens=8))
            report["too_long"] = None
        except ContextLengthError as err:
            report["too_long"] = str(err)
    finally:
        gen.close()
    hf = build_generator("transformers", model=str(model_dir), progress=False)
    report["greedy_hf"] = hf.generate(prompts, GenerationConfig(n=1, temperature=0.0, max_new_tokens=12))
    try:
        build_generator("vllm", model=str(model_dir), max_model_len=4096)
        report["max_len_error"] = None
    except ContextLengthError as err:
        report["max_len_error"] = str(err)
    return report


def scenario_eot(work: Path) -> dict:
    """The training sampler (VLLMPolicy, colocate) on a model whose eos differs from the chat end-of-turn."""
    from transformers import AutoTokenizer

    from autoif_train.configs import parse_recipe
    from autoif_train.data.rows import PromptRow
    from autoif_train.train import model_init_kwargs
    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_eot_model

    model_dir = build_eot_model(work / "model", hidden_size=64, heads=2, kv_heads=1)
    script_args, args, model_args = parse_recipe(
        str(ROOT / "recipes" / "tiny" / "online_dpo.yaml"),
        ["--model_name_or_path", str(model_dir), "--output_dir", str(work / "run"), "--use_vllm", "true",
         "--vllm_mode", "colocate", "--max_new_tokens", "8", "--vllm_max_model_length", "256"])
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    args.model_init_kwargs = model_init_kwargs(model_args)
    rows = [PromptRow(id=f"e{i}", messages=[{"role": "user", "content": f"Write a short poem {i}."}],
                      verifiers=["def evaluate(response):\n    return True\n"]) for i in range(4)]
    trainer = AutoIFOnlineDPOTrainer(model=str(model_dir), args=args, prompts=rows, processing_class=tok)
    records = trainer._sample_all(rows, 8)
    # an over-length prompt (> 256 - 8 positions) is skipped and counted, not raised inside vLLM on one rank
    long_row = PromptRow(id="long", messages=[{"role": "user", "content": "tell me about the sea " * 80}],
                         verifiers=["def evaluate(response):\n    return True\n"])
    trainer.prompts = rows[:2] + [long_row] + rows[2:3]
    trainer.args.prompts_per_round = len(trainer.prompts)
    _, plan = trainer._prepare_round(0, 0)
    round_samples = [json.loads(x) for x in (work / "run" / "rounds" / "round_0000" / "samples.jsonl").open()]
    overlength = {"plan": plan["overlength_prompts"], "prompt_end": plan["prompt_end"],
                  "long_tokens": len(trainer._encoded(long_row)),
                  "sampled_ids": sorted({x["prompt_id"] for x in round_samples})}
    report = {"records": records, "im_end": tok.convert_tokens_to_ids("<|im_end|>"), "eos": tok.eos_token_id,
              "stop_ids": trainer.sampler.stop_ids, "sampler": type(trainer.sampler).__name__,
              "overlength": overlength}
    trainer.close()
    return report


def scenario_grpo(work: Path) -> dict:
    """`stage: grpo` with colocated vLLM on a model whose eos differs from the chat end-of-turn: completions stop at
    <|im_end|>, rewards come from the sandboxed verifiers, and the engine serves the trained weights after a sync."""
    from transformers import AutoTokenizer

    from autoif_train.configs import parse_recipe
    from autoif_train.train import main
    from autoif_train.training import grpo

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_eot_model

    model_dir = build_eot_model(work / "model", hidden_size=64, heads=2, kv_heads=1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    seen, trainers = [], []
    real_call, real_init = grpo.RewardFunction.__call__, grpo.AutoIFGRPOTrainer.__init__

    def recording_call(self, prompts, completions, row_index, completion_ids=None, **kwargs):
        out = real_call(self, prompts, completions, row_index, **kwargs)
        seen.append({"completion_ids": [list(map(int, c)) for c in completion_ids], "rewards": list(out)})
        return out

    def keeping_init(self, *a, **k):
        real_init(self, *a, **k)
        trainers.append(self)

    grpo.RewardFunction.__call__, grpo.AutoIFGRPOTrainer.__init__ = recording_call, keeping_init
    script_args, args, model_args = parse_recipe(
        str(ROOT / "recipes" / "tiny" / "grpo.yaml"),
        ["--model_name_or_path", str(model_dir), "--output_dir", str(work / "run"), "--use_vllm", "true",
         "--vllm_mode", "colocate", "--vllm_max_model_length", "256", "--max_steps", "2",
         "--learning_rate", "5e-2"])
    result = main(script_args, args, model_args)
    trainer = trainers[0]
    generation = trainer.vllm_generation
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    completion_ids = tok(FIXED_COMPLETION, add_special_tokens=False)["input_ids"]

    def vllm_logprobs():
        from vllm import SamplingParams

        out = generation.llm.generate([{"prompt_token_ids": prompt_ids + completion_ids}], use_tqdm=False,
                                      sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
        return [e[t].logprob for e, t in zip(out.prompt_logprobs[len(prompt_ids):], completion_ids, strict=True)]

    gathers = generation.gathers
    generation.sync_weights()  # the last step's update is pushed at the next generation; push it now
    report = {"generation_class": type(generation).__name__, "gathers_during_training": gathers,
              "after_vllm": vllm_logprobs(), "after_hf": hf_logprobs(trainer.model, prompt_ids, completion_ids),
              "before_hf": hf_logprobs(_load(model_dir), prompt_ids, completion_ids),
              "seen": seen, "im_end": tok.convert_tokens_to_ids("<|im_end|>"), "eos": tok.eos_token_id,
              "eos_ids": list(trainer.eos_token_ids), "train_loss": result.metrics.get("train_loss")}
    return report


def _load(path: Path):
    """The transformers model saved at `path` (the untrained weights)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


SCENARIOS = {"eot": scenario_eot, "online": scenario_online, "online_lora": scenario_online_lora, "backend": scenario_backend, "zero3": scenario_zero3,
             "grpo": scenario_grpo}


def run_scenario(name: str, tmp_path: Path) -> dict:
    """Run one scenario in a fresh interpreter; its JSON report comes back (stderr shown on failure)."""
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    proc = subprocess.run(
        [sys.executable, __file__, name, str(tmp_path), str(out)], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=420,
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"scenario {name} failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def online_report(tmp_path_factory):
    pytest.importorskip("vllm")
    return run_scenario("online", tmp_path_factory.mktemp("vllm-online"))


@pytest.fixture(scope="module")
def online_lora_report(tmp_path_factory):
    pytest.importorskip("vllm")
    pytest.importorskip("peft")
    return run_scenario("online_lora", tmp_path_factory.mktemp("vllm-online-lora"))


@pytest.fixture(scope="module")
def backend_report(tmp_path_factory):
    pytest.importorskip("vllm")
    return run_scenario("backend", tmp_path_factory.mktemp("vllm-backend"))


@pytest.fixture(scope="module")
def zero3_reports(tmp_path_factory):
    """The zero3 scenario under `accelerate launch` on 2 CPU processes; one report per rank."""
    pytest.importorskip("vllm")
    pytest.importorskip("deepspeed")
    work = tmp_path_factory.mktemp("vllm-zero3")
    # hidden 256: the MLP and embedding matrices exceed DeepSpeed's persistence threshold (1e5 elements) and are
    # really split across the 2 ranks (smaller tensors stay whole on every rank, as in any ZeRO-3 run)
    build_vllm_tiny_model(work / "model", hidden_size=256)
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
         "--main_process_port", str(29500 + os.getpid() % 1000), __file__, "zero3", str(work),
         str(work / "zero3.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480,
    )
    reports = [work / f"zero3.json.rank{r}" for r in range(2)]
    if proc.returncode != 0 or not all(p.exists() for p in reports):
        pytest.fail(f"zero3 scenario failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    return [json.loads(p.read_text()) for p in reports]


@pytest.fixture(scope="module")
def grpo_report(tmp_path_factory):
    pytest.importorskip("vllm")
    return run_scenario("grpo", tmp_path_factory.mktemp("vllm-grpo"))


@pytest.fixture(scope="module")
def eot_report(tmp_path_factory):
    pytest.importorskip("vllm")
    return run_scenario("eot", tmp_path_factory.mktemp("vllm-eot"))


# ----- tests ------------------------------------------------------------------------------------------------------
def test_vllm_sampling_stops_at_the_chat_end_of_turn(eot_report):
    """eos is <|endoftext|>, the template ends turns with <|im_end|>: vLLM must stop there too."""
    r = eot_report
    assert r["sampler"] == "VLLMPolicy" and r["eos"] != r["im_end"] and r["im_end"] in r["stop_ids"]
    records = r["records"]
    assert len(records) == 32
    stopped = [s for s in records if s["finish_reason"] == "stop"]
    assert len(stopped) >= 8  # the model ends its turn often
    for s in records:
        ids = s["completion_ids"]
        assert r["im_end"] not in ids[:-1]  # nothing sampled after an end of turn
        if s["finish_reason"] == "stop":
            assert ids[-1] in r["stop_ids"] and s["num_tokens"] <= 8
        else:
            assert s["num_tokens"] == 8



def test_an_overlength_prompt_is_skipped_and_counted_not_raised(eot_report):
    o = eot_report["overlength"]
    assert o["long_tokens"] + 8 > 256  # the prompt really does not fit the engine's context
    assert o["plan"] == 1 and o["prompt_end"] == 4  # counted, and the round moved past it
    assert o["sampled_ids"] == ["e0", "e1", "e2"]


def test_vllm_sampling_params_mean_what_transformers_does():
    """One GenerationConfig, the same semantics on vLLM as checked for transformers in tests/test_rollouts.py."""
    pytest.importorskip("vllm")
    from vllm import SamplingParams

    from autoif_train.generation.base import GenerationConfig, vllm_kwargs

    off = SamplingParams(n=1, **vllm_kwargs(GenerationConfig(temperature=0.7, top_p=1.0, top_k=0), [1, 2]))
    assert off.top_k in (0, -1) and off.top_p == 1.0 and off.min_p == 0.0 and off.temperature == 0.7
    assert set(off.stop_token_ids) == {1, 2} and off.repetition_penalty == 1.0
    five = SamplingParams(n=1, **vllm_kwargs(GenerationConfig(temperature=1.0, top_k=5, min_p=0.1), [1]))
    assert five.top_k == 5 and five.min_p == 0.1


def test_online_dpo_rounds_sample_through_vllm(online_report):
    assert online_report["is_vllm_sampler"], online_report["sampler"]
    assert [r["round"] for r in online_report["rounds"]] == [0, 1]
    assert all(r["pairs"] > 0 and r["train_steps"] >= 1 for r in online_report["rounds"])
    samples = online_report["samples"]  # one record per sample: 2 rounds x 4 prompts x K = 4
    assert len(samples) == 32 and all(s["num_tokens"] == len(s["completion_ids"]) <= 8 for s in samples)
    assert {s["finish_reason"] for s in samples} <= {"stop", "length"}
    # sampled at temperature 1 from a random model: the K responses of a prompt are not all the same
    texts: dict[tuple, set] = {}
    for i, s in enumerate(samples):
        texts.setdefault((i // 16, s["prompt_id"]), set()).add(s["text"])
    assert all(len(t) > 1 for t in texts.values())
    # round 0 samples from the weights the engine loaded (no push); one sync before round 1, one explicit at the end
    assert online_report["syncs"] == 2


def test_vllm_logprobs_follow_the_trainer_weights_across_a_sync(online_report):
    r = online_report
    before_v, before_h, after_v, after_h = r["before_vllm"], r["before_hf"], r["after_vllm"], r["after_hf"]
    assert len(before_v) == len(before_h) > 3
    # vLLM serves exactly the trainer's weights before training and after the sync (fp32: equal to ~1e-4)
    assert before_v == pytest.approx(before_h, abs=1e-3)
    assert after_v == pytest.approx(after_h, abs=1e-3)
    # training moved the weights, so the log-probs differ clearly between the two
    assert abs(sum(after_h) - sum(before_h)) > 0.05
    # without a sync vLLM still had older weights (those of the last round's start), not the final ones
    assert r["stale_vllm"] != pytest.approx(after_h, abs=1e-3)


def test_lora_adapters_are_merged_for_the_sync(online_lora_report):
    r = online_lora_report
    assert r["peft"].startswith("PeftModel") and [x["round"] for x in r["rounds"]] == [0, 1]
    assert r["before_vllm"] == pytest.approx(r["before_hf"], abs=1e-3)
    # vLLM has no adapters: matching the PEFT model after training means the merged weights were pushed
    assert r["after_vllm"] == pytest.approx(r["after_hf"], abs=1e-3)
    # merged one LoRA layer at a time (bucket 0: one gather per unit), never the whole model in one gather
    assert 1 < r["last_sync"]["gathers"] < r["num_params"]
    assert abs(sum(r["after_hf"]) - sum(r["before_hf"])) > 0.05


def test_backend_batches_n_samples_per_prompt(backend_report):
    sampled = backend_report["sampled"]
    assert [len(s) for s in sampled] == [4, 4, 4]
    assert all(len(set(s)) > 1 for s in sampled)


def test_backend_greedy_matches_transformers(backend_report):
    greedy = backend_report["greedy_vllm"]
    assert all(a == b for a, b in greedy)  # n copies of the one greedy answer
    # same tokens; vLLM's incremental detokenizer holds back a trailing partial UTF-8 character that
    # transformers' batch_decode renders as U+FFFD, so compare up to that
    for (ours, _), (theirs,) in zip(greedy, backend_report["greedy_hf"], strict=True):
        assert len(ours) > 3 and theirs.startswith(ours) and set(theirs[len(ours) :]) <= {"\ufffd"}


def test_backend_context_errors_name_the_numbers(backend_report):
    assert "prompt 0" in backend_report["too_long"] and "max_model_len" in backend_report["too_long"]
    assert "4096" in backend_report["max_len_error"] and "256" in backend_report["max_len_error"]


def test_zero3_sync_gathers_the_shards(zero3_reports):
    for report in zero3_reports:
        # between gathers each rank holds only its shards of every weight matrix
        assert report["world"] == 2 and report["matrices"] == 16 and report["partitioned_matrices"] >= 8
        # each rank's colocated engine serves the full trained weights after the sync
        assert report["after_vllm"] == pytest.approx(report["after_hf"], abs=1e-3)
        assert report["stale_vllm"] != pytest.approx(report["after_hf"], abs=1e-3)
        # one bucketed gather moves exactly what one gather per tensor moves
        assert report["per_tensor_vllm"] == report["after_vllm"]
        assert report["bucketed_gathers"] == 1 and report["per_tensor_gathers"] == report["num_params"]
    rounds = zero3_reports[0]["rounds"]
    assert [r["round"] for r in rounds] == [0] and rounds[0]["pairs"] > 0 and rounds[0]["train_steps"] >= 1


def test_grpo_samples_through_vllm_and_pushes_the_trained_weights(grpo_report):
    r = grpo_report
    # TRL's VLLMGeneration was replaced by the project's (CPU engine settings, bucketed ZeRO-3 sync)
    assert r["generation_class"] == "AutoIFVLLMGeneration" and r["gathers_during_training"] >= 1
    assert r["train_loss"] == r["train_loss"]  # not NaN
    # eos (<|endoftext|>) is not the chat end of turn: completions still end at <|im_end|>, never run past it
    assert r["eos"] != r["im_end"] and r["im_end"] in r["eos_ids"]
    completions = [c for call in r["seen"] for c in call["completion_ids"]]
    assert len(completions) >= 8
    assert sum(c[-1] == r["im_end"] for c in completions if c) >= 2
    assert all(r["im_end"] not in c[:-1] for c in completions)
    assert all(x is None or 0.0 <= x <= 1.0 for call in r["seen"] for x in call["rewards"])
    # after the sync the engine serves the trained weights, which training moved
    assert r["after_vllm"] == pytest.approx(r["after_hf"], abs=1e-3)
    assert abs(sum(r["after_hf"]) - sum(r["before_hf"])) > 0.05


if __name__ == "__main__":
    name, work, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    result = SCENARIOS[name](work)
    if name == "zero3":
        out = out.with_name(f"{out.name}.rank{result['rank']}")
    out.write_text(json.dumps(result))
    from autoif_train.core.process_group import release_process_group

    release_process_group()  # as every `autoif` command does: a gloo group left to exit can abort the process
