"""Each distinct sequence computed once (`training.sequences`, `training.reference`) against TRL's pairwise DPO.

Run: python -m pytest tests/test_train_sequences.py -q        (add -m slow for the runs; the ZeRO-3 one launches 2
CPU processes with accelerate_configs/cpu_zero3.yaml)

One micro-batch mixes a 2 x 2 prompt (4 pairs over 4 distinct responses), a 2 x 1 prompt and a 1 x 1 prompt. TRL's
`_compute_loss` on the pairwise batch (its own reference forward) and `pair_loss` (each distinct sequence once,
whole or after a shared prompt cache, stored reference log-probs) give the same loss, metrics and gradient of
every parameter (atol 1e-5), for sigmoid and for sigmoid + sft. The stored reference log-probs equal TRL's own
reference forward (full fine-tuning, LoRA, and a 2-rank ZeRO-3 run), and whole runs trained both ways end with the
same weights.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoif_train.configs import parse_recipe
from autoif_train.core.errors import RecipeError
from autoif_train.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "online_dpo.yaml"
SIGMOID_SFT = ("--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.2")
LORA = ("--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj")
NO_CHECKPOINTING = ("--gradient_checkpointing", "false")  # TRL's default (true) keeps the policy's prompts unshared


def _trainer(model_dir: Path, out: Path, *overrides: str):
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.train import model_init_kwargs
    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    script_args, args, model_args = parse_recipe(str(RECIPE), ["--model_name_or_path", str(model_dir),
                                                               "--output_dir", str(out), *NO_CHECKPOINTING,
                                                               *overrides])
    args.model_init_kwargs = model_init_kwargs(model_args)
    rows = load_prompt_rows(str(ROOT / script_args.dataset_path), script_args.verifier_bundle)
    return AutoIFOnlineDPOTrainer(model=str(model_dir), args=args, prompts=rows,
                                  processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
                                  peft_config=get_peft_config(model_args))


def _mixed_pairs(tokenizer, prompt_ids: list[str], seed: int = 0, first: int = 0) -> list[dict]:
    """2 x 2, 2 x 1 and 1 x 1 prompts: 7 pairs over 9 distinct sequences, random lengths and tokens."""
    rng = random.Random(seed)

    def response():
        return [rng.randrange(3, tokenizer.vocab_size) for _ in range(rng.randrange(2, 9))] + [tokenizer.eos_token_id]

    pairs = []
    for prompt, (m, n) in enumerate([(2, 2), (2, 1), (1, 1)]):
        chosen, rejected = [response() for _ in range(m)], [response() for _ in range(n)]
        for c in range(m):
            for r in range(n):
                pairs.append({"prompt_index": first + prompt, "prompt_id": prompt_ids[prompt],
                              "chosen_sample": c, "rejected_sample": m + r,
                              "chosen_ids": chosen[c], "rejected_ids": rejected[r]})
    rng.shuffle(pairs)
    return pairs


def _prompt_ids(trainer, pairs):
    by_id = {row.id: row for row in trainer.prompts}
    return {p["prompt_id"]: trainer._encoded(by_id[p["prompt_id"]]) for p in pairs}


def _examples(pairs, prompt_ids, ref=None):
    out = []
    for p in pairs:
        e = {"prompt_ids": prompt_ids[p["prompt_id"]], "chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"]}
        if ref is not None:
            e["ref_chosen_logps"] = ref[(p["prompt_index"], p["chosen_sample"])]
            e["ref_rejected_logps"] = ref[(p["prompt_index"], p["rejected_sample"])]
        out.append(e)
    return out


def _loss_and_grads(trainer, fn, batch):
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    trainer._total_train_tokens = 0  # TRL's num_tokens metric is a running count
    loss = fn(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


def _perturb(model, scale: float = 0.05, only: str = "") -> None:
    """Move the policy off the reference, so the reference log-probs matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and only in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("share", [False, True], ids=["whole", "shared-prompts"])
@pytest.mark.parametrize("losses", [(), SIGMOID_SFT], ids=["sigmoid", "sigmoid+sft"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_per_sequence_loss_and_gradients_equal_trl_pairwise(tiny_model_dir, tmp_path, share, losses, lora):
    from trl import DPOTrainer

    from autoif_train.training.reference import reference_log_probs, round_sequences
    from autoif_train.training.sequences import distinct_sequences, pair_loss

    trainer = _trainer(tiny_model_dir, tmp_path / "out", *losses, *(LORA if lora else ()))
    assert trainer.dedupe and trainer.share_prompts  # the defaults, on one process without checkpointing
    trainer.model.train()
    _perturb(trainer.model, only="lora_B" if lora else "")  # LoRA: the reference is the base, adapter off
    pairs = _mixed_pairs(trainer.processing_class, [row.id for row in trainer.prompts])
    prompt_ids = _prompt_ids(trainer, pairs)

    trainer.precompute_ref_logps = False  # TRL's pairwise computation, reference forward included
    plain = trainer.data_collator(_examples(pairs, prompt_ids))
    expected = _loss_and_grads(trainer, lambda b: DPOTrainer._compute_loss(trainer, trainer.model, b, False), plain)

    seqs = round_sequences(pairs, prompt_ids)
    ref = dict(zip([s[0] for s in seqs], reference_log_probs(trainer, seqs), strict=True))
    trainer.precompute_ref_logps, trainer.share_prompts = True, share
    batch = trainer.data_collator(_examples(pairs, prompt_ids, ref))
    layout = distinct_sequences(batch)
    assert len(layout.tokens) == 4 + 3 + 2 and len(layout.rows) == 2 * 7  # 9 distinct of 14 pairwise rows
    got = _loss_and_grads(trainer, lambda b: pair_loss(trainer, trainer.model, b), batch)

    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
    trainable = sum(p.requires_grad for p in trainer.model.parameters())
    assert got[1].keys() == expected[1].keys() and len(got[1]) == trainable
    for name, grad in expected[1].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(got[1][name], grad, rtol=0, atol=1e-5, msg=f"gradient of {name}")
    assert got[2].keys() == expected[2].keys()
    for key, value in expected[2].items():  # TRL's metrics: rewards, margins, log-probs, entropy, token accuracy
        assert got[2][key] == pytest.approx(value, abs=1e-5), key


def test_compute_loss_with_dedupe_matches_plain_trainer_and_keeps_loss_weight(tiny_model_dir, tmp_path):
    """Through the trainer's own `compute_loss`: the weight of a round's filler micro-batch still applies."""
    from trl import DPOTrainer

    from autoif_train.training.reference import reference_log_probs, round_sequences

    trainer = _trainer(tiny_model_dir, tmp_path / "out", *SIGMOID_SFT)
    _perturb(trainer.model)
    pairs = _mixed_pairs(trainer.processing_class, [row.id for row in trainer.prompts], seed=3)
    prompt_ids = _prompt_ids(trainer, pairs)
    seqs = round_sequences(pairs, prompt_ids)
    ref = dict(zip([s[0] for s in seqs], reference_log_probs(trainer, seqs), strict=True))
    trainer.precompute_ref_logps = False
    plain = DPOTrainer._compute_loss(trainer, trainer.model, trainer.data_collator(_examples(pairs, prompt_ids)),
                                     False)
    trainer.precompute_ref_logps = True
    batch = trainer.data_collator(_examples(pairs, prompt_ids, ref))
    assert trainer.compute_loss(trainer.model, dict(batch)).item() == pytest.approx(plain.item(), abs=1e-6)
    half = trainer.compute_loss(trainer.model, dict(batch, loss_weight=0.5)).item()
    assert half == pytest.approx(0.5 * plain.item(), abs=1e-6)
    assert trainer.compute_loss(trainer.model, dict(batch, loss_weight=0.0)).item() == 0.0


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_stored_reference_equals_a_fresh_trl_reference_forward(tiny_model_dir, tmp_path, lora):
    from autoif_train.training.reference import round_reference

    trainer = _trainer(tiny_model_dir, tmp_path / "out", *(LORA if lora else ()))
    # LoRA: a non-zero adapter, so the policy differs from the reference (its base); full: the policy moves too
    _perturb(trainer.model, only="lora_B" if lora else "")
    pairs = _mixed_pairs(trainer.processing_class, [row.id for row in trainer.prompts], seed=5)
    prompt_ids = _prompt_ids(trainer, pairs)
    ref, reused = round_reference(trainer, 0, pairs, prompt_ids)
    assert not reused and (trainer.store.round_dir(0) / "reference.jsonl").is_file()
    # TRL's own reference forward on the pairwise batch (adapter off under PEFT)
    batch = trainer.data_collator(_examples(pairs, prompt_ids))
    model = trainer.model if lora else trainer.ref_model
    fresh_chosen, fresh_rejected = trainer.compute_ref_log_probs(model, batch)
    stored_chosen = torch.tensor([ref[(p["prompt_index"], p["chosen_sample"])] for p in pairs])
    stored_rejected = torch.tensor([ref[(p["prompt_index"], p["rejected_sample"])] for p in pairs])
    torch.testing.assert_close(stored_chosen, fresh_chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(stored_rejected, fresh_rejected, rtol=0, atol=1e-5)
    with torch.no_grad():  # the policy itself (adapter on) scores differently: the reference is not the policy
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        policy = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                               fused_lm_head=True).log_probs.sum(dim=1).chunk(2)[0]
    assert (policy - fresh_chosen).abs().max() > 1e-3
    # reused from disk while it matches; recomputed when max_length changes what is scored
    again, reused = round_reference(trainer, 0, pairs, prompt_ids)
    assert reused and again == ref
    trainer.data_collator.max_length = len(max(prompt_ids.values(), key=len)) + 3
    _, reused = round_reference(trainer, 0, pairs, prompt_ids)
    assert not reused


def test_config_refuses_dedupe_with_per_pair_reference_terms(tiny_model_dir, tmp_path):
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path)]
    with pytest.raises(RecipeError, match="dedupe_sequences"):
        parse_recipe(str(RECIPE), [*base, "--ld_alpha", "0.5"])
    _, args, _ = parse_recipe(str(RECIPE), [*base, "--ld_alpha", "0.5", "--dedupe_sequences", "false"])
    assert args.ld_alpha == 0.5 and not args.dedupe_sequences


def _run(model_dir: Path, out: Path, *overrides: str):
    args = parse_recipe(str(RECIPE), ["--model_name_or_path", str(model_dir), "--output_dir", str(out), *overrides])
    return train_main(*args)


def _same_weights(a: Path, b: Path, atol: float = 1e-5) -> float:
    """Assert equal weights; return the largest change training made (so the check is not vacuous)."""
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for name, tensor in wb.items():
        torch.testing.assert_close(wa[name], tensor, rtol=0, atol=atol, msg=f"{name} differs")
    return max(float((wa[n] - wb[n]).abs().max()) for n in wa)


@pytest.mark.slow
def test_online_run_with_dedupe_ends_with_the_weights_of_trl_pairwise(tiny_model_dir, tmp_path):
    """Two rounds, micro-batches of 4 pairs x 2 accumulation steps, sigmoid + sft: the same pairs and the same final
    weights with `dedupe_sequences` on and off; the stored reference covers each round's distinct sequences."""
    extra = ("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
             *SIGMOID_SFT, *NO_CHECKPOINTING)
    fast, plain = tmp_path / "dedupe", tmp_path / "plain"
    rounds = _run(tiny_model_dir, fast, *extra).rounds
    _run(tiny_model_dir, plain, *extra, "--dedupe_sequences", "false")
    _same_weights(fast, plain)
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    final = load_file(str(fast / "model.safetensors"))
    assert max(float((final[n] - initial[n]).abs().max()) for n in initial) > 1e-3  # training moved the weights
    for r, rec in enumerate(rounds):
        folder = fast / "rounds" / f"round_{r:04d}"
        assert (folder / "pairs.jsonl").read_text() == (plain / "rounds" / f"round_{r:04d}" / "pairs.jsonl").read_text()
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        keys = {(p["prompt_index"], p[f"{side}_sample"]) for p in pairs for side in ("chosen", "rejected")}
        stored = [json.loads(line) for line in (folder / "reference.jsonl").read_text().splitlines()]
        assert {(s["prompt_index"], s["sample_index"]) for s in stored} == keys and len(stored) == len(keys)
        assert rec["reference_seconds"] >= 0
        assert not (plain / "rounds" / f"round_{r:04d}" / "reference.jsonl").exists()


@pytest.mark.slow
def test_zero3_two_processes_store_trl_reference_and_train_like_trl_pairwise(tiny_model_dir, tmp_path):
    """accelerate launch, 2 CPU processes, DeepSpeed ZeRO-3: the stored reference log-probs (each rank an equal share)
    equal a single-process TRL reference forward of the initial model, and the run ends with the weights of the same
    run on TRL's pairwise path."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    def launch(out: Path, *extra: str):
        accelerate = str(Path(sys.executable).parent / "accelerate")
        cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
               "-m", "autoif_train.train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir),
               "--output_dir", str(out), "--num_rounds", "1", "--per_device_train_batch_size", "2", *SIGMOID_SFT,
               *NO_CHECKPOINTING, *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
        env.pop("LOCAL_RANK", None)
        log = out.parent / f"{out.name}.log"
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=600)
        assert proc.returncode == 0, log.read_text()[-4000:]

    fast, plain = tmp_path / "z3-dedupe", tmp_path / "z3-plain"
    launch(fast)
    launch(plain, "--dedupe_sequences", "false")
    _same_weights(fast, plain)

    folder = fast / "rounds" / "round_0000"
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    stored = {(s["prompt_index"], s["sample_index"]): s["logp"]
              for s in map(json.loads, (folder / "reference.jsonl").read_text().splitlines())}
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.generation.chat import encode_prompt

    rows = {row.id: row for row in load_prompt_rows(str(ROOT / "tests" / "data" / "online_prompts.jsonl"))}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trl = DPOTrainer(model=model, ref_model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), max_length=128, report_to="none", bf16=False),
                     train_dataset=_placeholder(), processing_class=tok)
    batch = trl.data_collator([{"prompt_ids": encode_prompt(tok, rows[p["prompt_id"]].messages),
                                "chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"]} for p in pairs])
    chosen, rejected = trl.compute_ref_log_probs(trl.ref_model, batch)
    torch.testing.assert_close(torch.tensor([stored[(p["prompt_index"], p["chosen_sample"])] for p in pairs]),
                               chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor([stored[(p["prompt_index"], p["rejected_sample"])] for p in pairs]),
                               rejected, rtol=0, atol=1e-5)


def _placeholder():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                               "chosen": [{"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "assistant", "content": "b"}]}])


@pytest.mark.slow
def test_throughput_benchmark_trains_the_same_steps_as_trl(tiny_model_dir, tmp_path):
    """benchmarks/train_throughput.py on a round folder: both trainers run, and as they train the same micro-batches
    from the same model, their logged losses and margins agree (no timing is asserted)."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = [f"p{i:02d}" for i in range(6)]
    pairs = _mixed_pairs(tok, ids[:3], seed=7) + _mixed_pairs(tok, ids[3:], seed=8, first=3)
    folder = tmp_path / "round_0000"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    figures = train_throughput.main(["--round", str(folder), "--recipe", str(RECIPE), "--model", str(tiny_model_dir),
                                     "--steps", "5", "--json", str(tmp_path / "figures.json")])
    assert figures["steps"] == 5 and figures["timed_pairs"] == 8 and figures["ratio"] > 0
    assert figures["project_dedupe"] is True
    assert figures["project_loss"] == pytest.approx(figures["trl_loss"], abs=1e-5)
    assert figures["project_rewards/margins"] == pytest.approx(figures["trl_rewards/margins"], abs=1e-5)
    assert json.loads((tmp_path / "figures.json").read_text())["ratio"] == figures["ratio"]
