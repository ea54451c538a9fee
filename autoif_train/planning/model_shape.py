"""The model's shape for memory planning: where its config.json comes from, and its parameter counts.

A recipe's `model_name_or_path` resolves to a config in this order:
1. `--model-config FILE` (any transformers config.json);
2. a local model folder holding `config.json`;
3. a config shipped with the project, `autoif_train/resources/model_configs/<hub id with / as -->.json`
   (the paper models and the embedded SmolLM2), so the paper recipes plan with no download;
4. the output of a sibling recipe: `outputs/llama3-8b/sft` is what `recipes/llama3-8b/sft.yaml` writes, so it has the
   shape of that recipe's `model_name_or_path` (followed recursively).

Parameter counts follow the decoder-only Llama / Qwen2 / Mistral layout (q/k/v/o projections, gated MLP, RMSNorm,
optional q/k/v bias for Qwen2); other architectures are counted the same way, which is only approximate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoif_train.configs import RecipeError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "model_configs"
QKV_BIAS_TYPES = ("qwen2",)  # model types whose q/k/v projections carry a bias


class PlanInputError(RecipeError):
    """The recipe, the model's config or a planning flag cannot be planned (bad or missing input)."""


@dataclass(frozen=True)
class ModelShape:
    """Architecture fields that memory depends on, and where they came from."""

    name: str
    source: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool
    max_position_embeddings: int | None = None

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + head + self.num_layers * self.layer_params + self.hidden_size

    @property
    def largest_layer_params(self) -> int:
        """Largest single module (DeepSpeed's `largest_layer_params`): the embedding, the LM head or one MLP matrix."""
        return max(self.embedding_params, self.hidden_size * self.intermediate_size)

    @property
    def num_tensors(self) -> int:
        """Parameter tensors (what a per-tensor weight sync gathers one by one)."""
        per_layer = 9 + (3 if self.qkv_bias else 0)
        return self.num_layers * per_layer + 2 + (0 if self.tied_embeddings else 1)

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tensor_parallel: int = 1) -> int:
        """KV cache per token on one GPU: layers x 2 (K and V) x kv_heads / TP (at least 1) x head_dim x bytes."""
        kv_heads = max(1, self.num_kv_heads // tensor_parallel) if tensor_parallel > 1 else self.num_kv_heads
        return self.num_layers * 2 * kv_heads * self.head_dim * dtype_bytes


def shape_from_config(config: dict, name: str, source: str) -> ModelShape:
    """A `ModelShape` from a transformers config.json mapping (a `text_config` inside is used when present)."""
    config = config.get("text_config", config)
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if not isinstance(config.get(key), int)]
    if missing:
        raise PlanInputError(f"{source}: model config lacks {', '.join(missing)}")
    heads = config["num_attention_heads"]
    return ModelShape(
        name=name, source=source, hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"], num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab_size=config["vocab_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") in QKV_BIAS_TYPES)),
        max_position_embeddings=config.get("max_position_embeddings"),
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PlanInputError(f"{path}: not a readable JSON model config ({err})") from err
    if not isinstance(data, dict):
        raise PlanInputError(f"{path}: a model config must be a JSON object")
    return data


def shipped_config(name: str) -> Path | None:
    """The shipped config file for a hub id or embedded model name, if the project has one."""
    path = CONFIG_DIR / (name.strip("/").replace("/", "--") + ".json")
    return path if path.is_file() else None


def _sibling_recipe_model(model: str, recipe_path: Path) -> tuple[str, Path] | None:
    """(model_name_or_path, recipe) of the recipe next to `recipe_path` whose `output_dir` is `model`."""
    import yaml

    for other in sorted(recipe_path.parent.glob("*.yaml")):
        if other.resolve() == recipe_path.resolve():
            continue
        try:
            data = yaml.safe_load(other.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and str(data.get("output_dir", "")).rstrip("/") == model.rstrip("/"):
            if data.get("model_name_or_path"):
                return str(data["model_name_or_path"]), other
    return None


def resolve_shape(model: str, recipe_path: str | None = None, model_config: str | None = None) -> ModelShape:
    """The `ModelShape` for a recipe's `model_name_or_path` (see the module docstring for the search order)."""
    if model_config:
        path = Path(model_config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise PlanInputError(f"--model-config: file not found: {model_config}")
        return shape_from_config(_read_json(path), model, str(path))
    seen, current, via = set(), model, []
    while current and current not in seen:
        seen.add(current)
        local = Path(current) / "config.json"
        if local.is_file():
            return shape_from_config(_read_json(local), model, " <- ".join([str(local), *via]))
        shipped = shipped_config(current)
        if shipped is not None:
            return shape_from_config(_read_json(shipped), model, " <- ".join([f"{current} (shipped config)", *via]))
        sibling = _sibling_recipe_model(current, Path(recipe_path)) if recipe_path else None
        if sibling is None:
            break
        via.insert(0, f"{current} (output of {sibling[1]})")
        current, recipe_path = sibling[0], str(sibling[1])
    raise PlanInputError(
        f"no config.json for model {model!r}: it is not a local folder and no config ships for it; "
        "pass --model-config path/to/config.json"
    )
