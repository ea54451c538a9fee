"""Every training recipe parses against the config dataclasses, opens with its command, and keeps the paper's numbers.

Run: python -m pytest tests/test_train_recipes.py -q
"""

from pathlib import Path

import pytest
import yaml

from autoif_train.configs import parse_recipe

ROOT = Path(__file__).resolve().parent.parent
TRAIN_RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if yaml.safe_load(p.read_text()).get("stage"))
PAPER = [p for p in TRAIN_RECIPES if p.parent.name in ("qwen2-7b", "llama3-8b", "qwen2-72b", "llama3-70b")]


@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path, tmp_path):
    # bf16 recipes target GPUs: parse them with bf16 off here, everything else as written
    script_args, training_args, model_args = parse_recipe(str(path), ["--bf16", "false", "--output_dir",
                                                                      str(tmp_path)])
    assert script_args.stage in path.name or path.parent.name == "quickstart"
    assert model_args.model_name_or_path and script_args.dataset_path


@pytest.mark.parametrize("path", PAPER, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_recipes_header_and_settings(path, tmp_path):
    text = path.read_text()
    assert text.startswith("# ") and "# Hardware:" in text and f"launch.sh recipes/{path.parent.name}/{path.name}" in text
    raw = yaml.safe_load(text)
    gpus = 64 if raw["accelerate_config"] == "zero3_multinode" else 8
    batch = gpus * raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"]
    if raw["stage"] == "sft":
        assert (raw["learning_rate"], raw["lr_scheduler_type"], raw["warmup_steps"], raw["num_train_epochs"]) == (
            7e-6, "linear", 20, 3)
        assert raw["weight_decay"] == 0.1 and raw["max_length"] == 8192
        assert batch == (512 if gpus == 64 else 128)
    elif raw["stage"] == "grpo":  # open-instruct's IF-RLVR settings (valpy_if_grpo_fast.sh) as the starting point
        assert (raw["learning_rate"], raw["lr_scheduler_type"], raw["beta"], raw["temperature"]) == (
            5e-7, "constant", 0.01, 1.0)
        assert raw["num_generations"] == 16 and raw["max_completion_length"] == 2048
        assert batch == 48 * 16  # 48 prompts x 16 completions per optimizer step
    else:
        assert (raw["learning_rate"], raw["lr_scheduler_type"], raw["warmup_steps"], raw["beta"]) == (
            5e-7, "cosine", 0.1, 0.3)
        assert raw["loss_type"] == ["sigmoid"] and raw["max_length"] == 4096 and batch == 64
    if raw["stage"] == "online_dpo":
        assert (raw["num_samples"], raw["temperature"], raw["chosen_threshold"], raw["rejected_threshold"]) == (
            8, 0.8, 0.5, 0.0)
        assert (raw["max_chosen"], raw["max_rejected"]) == (2, 2)
    if raw["stage"] == "dpo":
        assert raw["num_train_epochs"] == 2


@pytest.mark.parametrize("path", [p for p in PAPER if p.name == "online_dpo.yaml"], ids=lambda p: p.parent.name)
def test_paper_online_recipes_have_an_exact_global_schedule(path, tmp_path):
    """pairs_per_round makes every round's step count, hence the paper's one cosine with 0.1 warm-up, exact."""
    from autoif_train.training.schedule import resolve_scope

    _, args, _ = parse_recipe(str(path), ["--bf16", "false", "--output_dir", str(tmp_path)])
    assert args.pairs_per_round and args.rollout_chunk_prompts
    assert resolve_scope(args.lr_schedule_scope, str(args.lr_scheduler_type.value), total_known=True) == "global"
    assert str(args.lr_scheduler_type.value) == "cosine" and args.warmup_steps == 0.1
