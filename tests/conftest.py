"""Shared test fixtures: tiny random-weight models and a tokenizer trained in-process (no hub, no network).

Run the suite with `make test` (all) or `make test-fast` (without tests marked slow).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_IFEVAL = REPO_ROOT.parent / "shared" / "benchmarks" / "ifeval" / "input_data.jsonl"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2-Instruct's kind of template: ChatML without `{% generation %}` markers, which TRL cannot patch
PLAIN_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Write a short poem about the sea. Answer in lowercase letters only.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Explain photosynthesis in fewer than twenty words, without commas.",
    "Yes, the capital of France is Paris; it lies on the Seine river.",
    "Give three bullet points about healthy sleep habits and end with THE END.",
    "Include the keyword banana at least twice. Banana bread is tasty, banana!",
    "ALL CAPITAL LETTERS PLEASE. NO QUESTIONS? 1 2 3 4 5 6 7 8 9 0 # * - : ; ( ) [ ] { } \" '",
]


def build_tokenizer(save_dir: Path):
    """A byte-level BPE tokenizer (vocab ~400) with ChatML special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(save_dir)
    return fast


def build_tiny_model(save_dir: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (hidden 32) plus the in-process tokenizer to `save_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(save_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(save_dir)
    return save_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path to a saved tiny random Llama with tokenizer and chat template (shared, read-only by convention)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def fresh_tiny_model_dir(tmp_path) -> Path:
    """A private copy of the tiny model for tests that write into the model folder."""
    return build_tiny_model(tmp_path / "tiny-llama")


@pytest.fixture(scope="session")
def ifeval_path() -> Path:
    """IFEval's public prompts from ../shared (skips cleanly where the folder is absent)."""
    if not SHARED_IFEVAL.exists():
        pytest.skip(f"{SHARED_IFEVAL} not present")
    return SHARED_IFEVAL


def build_eot_model(save_dir: Path, hidden_size: int = 32, boost: float = 0.7, seed: int = 0,
                    heads: int = 4, kv_heads: int = 2) -> Path:
    """A tiny Llama whose tokenizer's eos (`<|endoftext|>`) is not the chat end-of-turn (`<|im_end|>`), as in Qwen2
    and Llama-3, and which often ends its turn: one residual dimension is held constant (every embedding has it, no
    layer writes to it), and only `<|im_end|>`'s output row reads it, so `<|im_end|>` gets a steady logit bonus."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(save_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(save_dir)
    tok.eos_token = "<|endoftext|>"  # Qwen2 style: eos differs from the template's <|im_end|>
    tok.save_pretrained(save_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden_size // heads,
        max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eot, 0] = boost
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id  # only the tokenizer's eos, as many SFT checkpoints
    model.save_pretrained(save_dir)
    return save_dir


@pytest.fixture(scope="session")
def eot_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose eos differs from the chat end-of-turn, and which often ends its turn (see build_eot_model)."""
    return build_eot_model(tmp_path_factory.mktemp("eot-llama"))


@pytest.fixture(scope="session")
def plain_template_model_dir(tmp_path_factory) -> Path:
    """`eot_model_dir`'s model with SmolLM2's kind of chat template: no `{% generation %}` markers."""
    from transformers import PreTrainedTokenizerFast

    path = build_eot_model(tmp_path_factory.mktemp("plain-template-llama"))
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    tok.chat_template = PLAIN_CHATML_TEMPLATE
    tok.save_pretrained(path)
    return path
