"""`autoif plan`: the paper recipes plan with their models' real config values, model states match DeepSpeed's
estimators, the 70B colocate TP 1 topology does not fit, every shipped recipe fits, bad input exits 2 on one line.

Run: python -m pytest tests/test_plan.py -q
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from autoif_train import cli
from autoif_train.configs import parse_recipe
from autoif_train.plan import cli as plan_cli
from autoif_train.planning import (
    DoesNotFitError,
    GiB,
    Hardware,
    PlanInputError,
    check_fits,
    parse_memory,
    plan_recipe,
    require_fit,
    resolve_shape,
)
from autoif_train.planning.memory import activation_bytes, deepspeed_gpu_bytes, plan_memory, zero_gpu_bytes_formula
from autoif_train.planning.model_shape import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TRAIN_RECIPES = sorted(p for p in RECIPES.glob("*/*.yaml") if yaml.safe_load(p.read_text()).get("stage"))
PAPER_DIRS = ("qwen2-7b", "llama3-8b", "qwen2-72b", "llama3-70b")

# Architecture fields of the models' public config.json files, with their published parameter counts.
REAL_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                        tie_word_embeddings=False), 8_030_261_248),
    "meta-llama/Meta-Llama-3-70B": (dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                         num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                                         tie_word_embeddings=False), 70_553_706_496),
    "Qwen/Qwen2-7B": (dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False), 7_615_616_512),
    "Qwen/Qwen2-72B": (dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                            num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False), 72_706_203_648),
}
TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


def _model_config_for(recipe: Path, tiny_config: str) -> str | None:
    """The tiny recipes name a model folder the tests build; plan them with the tiny config."""
    return tiny_config if recipe.parent.name == "tiny" else None


# ----- shapes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", sorted(REAL_CONFIGS))
def test_shipped_configs_hold_the_real_values(hub_id):
    fields, params = REAL_CONFIGS[hub_id]
    shipped = json.loads((CONFIG_DIR / (hub_id.replace("/", "--") + ".json")).read_text())
    assert {k: shipped[k] for k in fields} == fields
    assert resolve_shape(hub_id).total_params == params


def test_embedded_model_config_matches_its_parameter_count():
    assert resolve_shape("smollm2-135m-instruct").total_params == 134_515_008  # SmolLM2-135M, tied embeddings


@pytest.mark.parametrize("name", ["llama3-70b", "qwen2-72b", "llama3-8b", "qwen2-7b"])
def test_online_recipe_model_resolves_through_its_sft_recipe(name):
    raw = yaml.safe_load((RECIPES / name / "sft.yaml").read_text())
    shape = resolve_shape(f"outputs/{name}/sft", str(RECIPES / name / "online_dpo.yaml"))
    assert shape.total_params == REAL_CONFIGS[raw["model_name_or_path"]][1]
    assert "shipped config" in shape.source and "sft.yaml" in shape.source


def test_per_tensor_sync_count_at_70b_is_the_issues_723():
    assert resolve_shape("meta-llama/Meta-Llama-3-70B").num_tensors == 723


# ----- model states against DeepSpeed ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [p for p in TRAIN_RECIPES if p.parent.name in PAPER_DIRS],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_recipes_plan_with_deepspeed_model_states(path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    plan = plan_recipe(str(path))
    shape, hw = plan.shape, plan.hardware
    assert hw.distributed == "deepspeed" and hw.zero_stage == 3
    expected = estimate_zero3_model_states_mem_needs(shape.total_params, shape.largest_layer_params,
                                                     hw.gpus_per_node, hw.nodes, cpu_offload=False,
                                                     cpu_offload_params=False, zero_init=True)[1]
    assert plan.model_states_deepspeed == expected
    states = [t for t in plan.terms if t.name in ("policy parameters", "gradients", "optimizer state")]
    assert len(states) == 3 and sum(t.bytes for t in states) == expected


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("offload", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("gpus", [(1, 8), (8, 8)])
def test_local_formula_equals_deepspeed_estimators(stage, offload, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = resolve_shape("meta-llama/Meta-Llama-3-70B")
    hw = Hardware(nodes=gpus[0], gpus_per_node=gpus[1], zero_stage=stage, offload_optimizer=offload[0],
                  offload_params=offload[1])
    p, big = shape.total_params, shape.largest_layer_params
    if stage == 3:
        ds = estimate_zero3_model_states_mem_needs(p, big, gpus[1], gpus[0], cpu_offload=offload[0],
                                                   cpu_offload_params=offload[1])[1]
    else:
        ds = estimate_zero2_model_states_mem_needs(p, gpus[1], gpus[0], cpu_offload=offload[0])[1]
    assert deepspeed_gpu_bytes(shape, hw) == ds == zero_gpu_bytes_formula(p, big, hw)


def test_zero2_keeps_a_full_reference_copy():
    plan = plan_recipe(str(RECIPES / "llama3-8b" / "online_dpo.yaml"), accelerate_config="zero2")
    ref = next(t for t in plan.terms if t.name == "reference model")
    assert ref.bytes == 2 * plan.shape.total_params and plan.hardware.zero_stage == 2


# ----- formulas ----------------------------------------------------------------------------------------------------
def test_activation_formula_by_hand(tiny_config):
    """tiny: h=64, i=128, kv d = 2 x 16 = 32, 2 layers, vocab 512; DPO micro-batch 1 x 2 sequences x 128 tokens.

    tokens = 256; per layer and token 2 B x (10h + 3 kv d + 4i) = 2 x (640 + 96 + 512) = 2496 B; logits 256 x 512 x 4
    without checkpointing: 256 x 2 x 2496 + 524288 = 1802240
    with it: 256 x 2 x 64 x 2 (saved inputs) + 256 x 2496 (one layer) + 524288 = 65536 + 638976 + 524288 = 1228800
    """
    plan = plan_recipe(str(RECIPES / "tiny" / "dpo.yaml"), model_config=tiny_config)
    settings = replace(plan.settings, max_length=128, per_device_train_batch_size=1)
    assert activation_bytes(plan.shape, settings, checkpointing=False) == 1_802_240
    assert activation_bytes(plan.shape, settings, checkpointing=True) == 1_228_800


def test_transformers_kv_cache_of_the_8b_fallback_is_the_issues_70_gib():
    """64 prompts x K=8 x (256 + 1024) tokens x 32 layers x 2 x 8 KV heads x 128 x 2 B = 80 GiB (the issue's ~70 GiB
    assumed shorter prompts); with the gathered 15 GiB model it does not fit, and smaller batches are the fix."""
    plan = plan_recipe(str(RECIPES / "llama3-8b" / "online_dpo.yaml"),
                       overrides=["--use_vllm", "false", "--generation_batch_size", "64"])
    kv = next(t for t in plan.terms if t.name == "transformers sampling: KV cache")
    assert kv.bytes == 64 * 8 * 1280 * 32 * 2 * 8 * 128 * 2 == 80 * GiB
    gather = next(t for t in plan.terms if t.name == "transformers sampling: gathered full model")
    assert gather.bytes == 2 * plan.shape.total_params
    assert not plan.fits and "transformers sampling: KV cache" in plan.breaking
    assert plan.fixes and plan.fixes[0].startswith("generation_batch_size: 16")


# ----- verdicts ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nodes", [8, 1])
@pytest.mark.parametrize("name", ["llama3-70b", "qwen2-72b"])
def test_70b_colocate_tp1_does_not_fit(name, nodes, capsys):
    recipe = str(RECIPES / name / "online_dpo.yaml")
    flags = [recipe, "--nodes", str(nodes), "--gpus-per-node", "8", "--gpu-memory", "80GB",
             "--vllm_tensor_parallel_size", "1", "--vllm_gpu_memory_utilization", "0.3"]
    assert plan_cli(flags) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "the term that breaks it: vLLM weights (bf16 / TP 1)" in out
    if nodes == 8:  # on one node the ZeRO-3 states alone (~150 GiB per GPU) rule out any vLLM setting
        assert "vllm_tensor_parallel_size: 8" in out.split("settings that would fix it:")[1]


@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_fits(path, tiny_config):
    plan = plan_recipe(str(path), model_config=_model_config_for(path, tiny_config))
    assert plan.fits, plan.problems


@pytest.mark.parametrize("name", PAPER_DIRS)
def test_paper_online_recipes_keep_checkpoints_bounded_and_sample_within_a_node(name):
    raw = yaml.safe_load((RECIPES / name / "online_dpo.yaml").read_text())
    assert raw["save_total_limit"] >= 1 and raw["use_vllm"] and raw["vllm_mode"] == "colocate"
    assert raw["vllm_tensor_parallel_size"] == (8 if name in ("qwen2-72b", "llama3-70b") else 2)


def test_cli_prints_the_table_and_topology(capsys):
    assert cli.main(["plan", str(RECIPES / "llama3-8b" / "online_dpo.yaml")]) == 0
    out = capsys.readouterr().out
    for text in ("policy parameters", "gradients", "optimizer state", "reference model", "activations",
                 "vLLM weights (bf16 / TP 2)", "sampling topology:", "round time", "fits: peak",
                 "estimate_zero3_model_states_mem_needs"):
        assert text in out, text


def test_check_fits_from_parsed_args_and_force():
    script_args, training_args, model_args = parse_recipe(
        str(RECIPES / "llama3-70b" / "online_dpo.yaml"), ["--bf16", "false", "--vllm_tensor_parallel_size", "1"])
    hw = Hardware(nodes=8, gpus_per_node=8, gpu_memory=80 * GiB, zero_stage=3)
    plan = check_fits(script_args, training_args, model_args, hardware=hw,
                      recipe_path=str(RECIPES / "llama3-70b" / "online_dpo.yaml"))
    assert plan.settings.weight_bytes == 2 and not plan.fits
    with pytest.raises(DoesNotFitError, match="does not fit.*--force"):
        require_fit(plan)
    assert require_fit(plan, force=True) is plan
    training_args.vllm_tensor_parallel_size = 8
    assert require_fit(check_fits(script_args, training_args, model_args, hardware=hw,
                                  recipe_path=str(RECIPES / "llama3-70b" / "online_dpo.yaml"))).fits


def test_check_fits_reads_the_accelerate_launch_environment(monkeypatch):
    recipe = str(RECIPES / "llama3-70b" / "online_dpo.yaml")
    script_args, training_args, model_args = parse_recipe(recipe, ["--bf16", "false"])
    launch = {"WORLD_SIZE": "64", "LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true",
              "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", raising=False)
    plan = check_fits(script_args, training_args, model_args, recipe_path=recipe, gpu_memory=80 * GiB)
    assert (plan.hardware.nodes, plan.hardware.gpus_per_node, plan.hardware.zero_stage) == (8, 8, 3)
    assert plan.fits and plan.model_states_deepspeed is not None


# ----- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["recipes/nope.yaml"], "recipe file not found"),
    ([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--gpu-memory", "lots"], "--gpu-memory"),
    ([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--nodes", "0"], "--nodes must be positive"),
    ([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--nodes", "two"], "invalid int value"),
    ([str(RECIPES / "synth" / "quickstart.yaml")], "not a training recipe"),
    ([str(RECIPES / "tiny" / "sft.yaml")], "no config.json for model 'outputs/tiny-llama'"),
    ([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--accelerate-config", "zero9"], "accelerate config not found"),
    ([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--num_sample", "3"], "field 'num_sample': unknown key"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert plan_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoif plan: error: ") and message in err[0], err


def test_model_config_that_is_not_json_is_bad_input(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert plan_cli([str(RECIPES / "tiny" / "sft.yaml"), "--model-config", str(bad)]) == 2
    assert "not a readable JSON model config" in capsys.readouterr().err


def test_missing_deepspeed_config_file_is_bad_input(tmp_path, monkeypatch, capsys):
    from autoif_train.core.errors import InputError
    from autoif_train.planning.inputs import hardware_from_environment

    ds = tmp_path / "ds.json"
    accel = tmp_path / "accel.yaml"
    accel.write_text(f"distributed_type: DEEPSPEED\nnum_machines: 1\nnum_processes: 8\n"
                     f"deepspeed_config:\n  deepspeed_config_file: {ds}\n")
    assert plan_cli([str(RECIPES / "llama3-8b" / "online_dpo.yaml"), "--accelerate-config", str(accel)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autoif plan:")]
    assert err == [f"autoif plan: error: {ds}: file not found"], err
    # `autoif train`'s pre-flight plan reads the launch's DeepSpeed config file the same way
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds))
    with pytest.raises(InputError, match=r"ds\.json: file not found"):
        hardware_from_environment(None, gpu_memory=80 * GiB)


def test_memory_sizes_read_as_gib():
    assert parse_memory("80GB") == parse_memory("80GiB") == parse_memory("80") == 80 * GiB
    assert parse_memory("141G") == 141 * GiB
    with pytest.raises(PlanInputError):
        parse_memory("-3GB")


# ----- the pre-flight check in `autoif train` ----------------------------------------------------------------------
def test_train_refuses_a_recipe_over_the_gpu_budget_before_loading_weights(tiny_model_dir, tmp_path):
    """`autoif train` plans first: 1 MiB per GPU cannot hold even the tiny model, so it exits 2 in one line with
    the breaking term and `--force`, before any weights load (no output folder); `--force` starts anyway."""
    import subprocess
    import sys

    out = tmp_path / "run"
    base = [sys.executable, "-m", "autoif_train.cli", "train", "--config", str(RECIPES / "tiny" / "sft.yaml"),
            "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--plan_gpu_memory", "1MB",
            "--max_steps", "1"]
    proc = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "does not fit" in errors[0] and "--force" in errors[0]
    assert "Traceback" not in proc.stderr and not out.exists()
    forced = subprocess.run(base + ["--force", "true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "DOES NOT FIT (--force)" in forced.stderr and (out / "model.safetensors").exists()


def test_weight_sync_is_planned_in_buckets_at_70b():
    """723 per-tensor gathers at 70B become ~263 with the default 512 MiB buckets; the sync term is one bucket (or
    the embedding, when larger), plus one merged module under LoRA, never the whole model."""
    from autoif_train.planning.memory import Settings
    from autoif_train.planning.report import sync_gathers

    shape = resolve_shape("meta-llama/Meta-Llama-3-70B")
    settings = Settings(stage="online_dpo", weight_bytes=2, use_vllm=True)
    assert sync_gathers(shape, replace(settings, vllm_sync_bucket_mb=0)) == 723
    assert sync_gathers(shape, settings) == -(-2 * shape.total_params // (512 * 2**20))
    hw = Hardware(nodes=8, gpus_per_node=8, gpu_memory=80 * GiB, distributed="deepspeed", zero_stage=3)
    for peft, expected in ((False, 2 * shape.embedding_params), (True, 4 * shape.embedding_params)):
        plan = plan_memory(shape, replace(settings, use_peft=peft), hw)
        term = next(t for t in plan.terms if t.name.startswith("weight sync"))
        assert term.bytes == max(512 * 2**20, 2 * shape.embedding_params) + (expected - 2 * shape.embedding_params)
        assert term.bytes < 2 * shape.total_params / 25  # a few GiB, not the 131 GiB model


# ----- GRPO --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama3-8b", "qwen2-7b"])
def test_grpo_recipe_is_planned_as_a_sampling_stage(name, capsys):
    """GRPO samples (vLLM colocate) and trains one sequence per completion: a sampling phase, the KL reference at
    beta > 0, activations of micro-batch x 1 sequence, and per-rank completions from its own batch fields."""
    recipe = str(RECIPES / name / "grpo.yaml")
    plan = plan_recipe(recipe)
    s = plan.settings
    assert plan.fits, plan.problems
    assert s.online and plan.phases == ("train", "sample")
    raw = yaml.safe_load(Path(recipe).read_text())
    assert s.num_samples == raw["num_generations"] and s.max_new_tokens == raw["max_completion_length"]
    assert s.rank_completions == raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"]
    assert s.sequences_per_example == 1
    assert any(t.name == "reference model" for t in plan.terms) == (raw["beta"] != 0)
    assert any(t.name.startswith("vLLM weights") for t in plan.terms)
    e = plan.vllm  # colocate: each engine samples its rank's completions (x TP)
    assert e["seqs"] == -(-s.rank_completions // s.num_samples) * s.num_samples * e["tp"]
    dpo_like = replace(s, stage="online_dpo")
    assert activation_bytes(plan.shape, dpo_like, True) > activation_bytes(plan.shape, s, True)
    assert cli.main(["plan", recipe]) == 0
    out = capsys.readouterr().out
    assert "completions" in out and "sampling topology:" in out and "no sampling" not in out


def test_grpo_at_beta_zero_has_no_reference_model():
    plan = plan_recipe(str(RECIPES / "llama3-8b" / "grpo.yaml"), overrides=["--beta", "0.0"])
    assert not plan.settings.reference and not any(t.name == "reference model" for t in plan.terms)
