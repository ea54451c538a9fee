"""SFT and offline DPO through the one entry point, on the tiny random Llama: parameters move; bad input is clear.

Run: python -m pytest tests/test_train_stages.py -q
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoif_train.configs import parse_recipe
from autoif_train.train import cli, main

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "tiny"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _run(recipe: str, model_dir: Path, out: Path, *overrides: str):
    args = parse_recipe(str(RECIPES / recipe), ["--model_name_or_path", str(model_dir), "--output_dir", str(out),
                                                *overrides])
    return main(*args)


@pytest.mark.parametrize("recipe, stage", [("sft.yaml", "sft"), ("dpo.yaml", "dpo")])
def test_stage_trains_and_every_parameter_changes(tiny_model_dir, tmp_path, recipe, stage):
    result = _run(recipe, tiny_model_dir, tmp_path / "out")
    assert result.stage == stage and result.metrics["train_loss"] > 0
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "out")
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == [], f"{stage}: parameters did not change: {unchanged}"


def test_sft_loss_is_on_assistant_tokens_only(tiny_model_dir, tmp_path):
    """With assistant_only_loss (the AutoIF SFT default) only the assistant's tokens carry labels."""
    from trl import SFTTrainer

    from autoif_train.data.rows import load_sft_rows

    args = parse_recipe(str(RECIPES / "sft.yaml"), ["--output_dir", str(tmp_path / "o")])[1]
    rows = load_sft_rows(str(RECIPES.parent.parent / "tests" / "data" / "sft_tiny.jsonl"))[:1]
    from datasets import Dataset

    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=Dataset.from_list(rows))
    example = trainer.train_dataset[0]
    trained = [t for t in example["labels"] if t != -100]
    answer_ids = trainer.processing_class(rows[0]["messages"][1]["content"], add_special_tokens=False)["input_ids"]
    eos = trainer.processing_class.convert_tokens_to_ids("<|im_end|>")
    assert trained == answer_ids + [eos]  # exactly the answer and its <|im_end|>, no user or template tokens
    assert len(example["input_ids"]) > len(trained)


@pytest.mark.slow
def test_dpo_with_lora_trains_only_the_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    _run("dpo.yaml", tiny_model_dir, out, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
         "--lora_target_modules", "q_proj", "v_proj")
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means it trained
    assert not (out / "model.safetensors").exists()


def test_unknown_recipe_key_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPES / "sft.yaml").read_text() + "learning_rat: 0.1\n")
    assert cli(["--config", str(recipe)]) == 2
    message = capsys.readouterr().err
    assert "field 'learning_rat': unknown key" in message and "did you mean 'learning_rate'" in message


def test_missing_dataset_file_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    assert cli(["--config", str(RECIPES / "dpo.yaml"), "--model_name_or_path", str(tiny_model_dir),
                "--dataset_path", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'missing.jsonl'}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
