"""The weight-push stream (`generation.weight_sync.named_weights`): bucketed gathers move exactly the tensors that
per-tensor gathers move, LoRA is merged one module at a time into copies (base weights never drift), and under
DeepSpeed ZeRO-3 on 2 CPU ranks the buckets gather the shards in fewer collectives.

Run: python -m pytest tests/test_weight_sync.py -v   (the ZeRO-3 test is marked slow)
The vLLM side (log-probs after a sync equal the trainer's) is in tests/test_vllm_engine.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoif_train.core.process_group import release_process_group
from autoif_train.generation.weight_sync import named_weights

ROOT = Path(__file__).resolve().parents[1]


def _counting_gather(calls: list):
    @contextlib.contextmanager
    def gather(params):
        calls.append(len(params))
        yield

    return gather


def _stream(model, bucket_mb: float) -> tuple[list[tuple[str, torch.Tensor]], list[int]]:
    calls: list[int] = []
    pairs = [(name, t.detach().clone()) for name, t in named_weights(model, _counting_gather(calls), bucket_mb)]
    return pairs, calls


def _lora(model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a fresh adapter is zero: give it weight so merging changes something
            p.data.normal_(0, 0.05)
    return model


def test_buckets_move_the_same_tensors_in_the_same_order(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    reference = [(n, p.detach()) for n, p in model.named_parameters()]
    per_tensor, calls_0 = _stream(model, 0)
    one_bucket, calls_big = _stream(model, 512)
    small, calls_small = _stream(model, 0.01)  # ~10 KiB buckets
    for stream in (per_tensor, one_bucket, small):
        assert [n for n, _ in stream] == [n for n, _ in reference]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(stream, reference, strict=True))
    assert calls_0 == [1] * len(reference)  # TRL's behaviour: one gather per parameter
    assert calls_big == [len(reference)]
    assert 1 < len(calls_small) < len(reference) and sum(calls_small) == len(reference)


def test_lora_is_merged_per_module_into_copies(tiny_model_dir):
    model = _lora(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = copy.deepcopy(model).merge_and_unload()
    expected = [(n, p.detach()) for n, p in merged.named_parameters()]
    for bucket in (0, 512):
        stream, calls = _stream(model, bucket)
        assert [n for n, _ in stream] == [n for n, _ in expected]  # vLLM's names: no base_layer, no lora_*
        for (name, got), (_, want) in zip(stream, expected, strict=True):
            assert torch.allclose(got, want, atol=1e-6), name
    # a LoRA layer is one unit: its base weight and adapters are gathered together, never the whole model at once
    per_unit, unit_calls = _stream(model, 0)
    lora_layers = sum(1 for n, _ in model.named_modules() if n.endswith("q_proj"))
    assert len(unit_calls) < len(list(model.parameters())) and max(unit_calls) == 3 and lora_layers == 2
    assert any(not torch.equal(a, before[f"base_model.model.{n}".replace(".weight", ".base_layer.weight")])
               for n, a in per_unit if "q_proj.weight" in n)  # the adapters changed what is pushed
    # the model itself is untouched: no in-place merge/unmerge round trip, bit for bit
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())


# ----- ZeRO-3 on 2 CPU ranks (accelerate launch) ------------------------------------------------------------------
def _zero3_scenario(model_dir: Path, out: Path) -> None:
    """Under `accelerate launch` (cpu_zero3): partition the model, stream it with several bucket sizes on every
    rank, compare with the fully gathered weights, write one JSON report per rank."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {"train_micro_batch_size_per_gpu": 1,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - from_pretrained partitions under zero.Init while it lives
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    rank = dist.get_rank()
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        full = [(n, p.detach().clone()) for n, p in model.named_parameters()]

    def gathering(calls):
        def gather(ps):
            calls.append(len(ps))
            return deepspeed.zero.GatheredParameters(ps)

        return gather

    report = {"rank": rank, "partitioned": sum(p.numel() == 0 for p in params), "streams": {}}
    for bucket in (0, 0.01, 512):
        calls: list[int] = []
        stream = [(n, t.detach().clone()) for n, t in named_weights(model, gathering(calls), bucket)]
        report["streams"][str(bucket)] = {
            "names_match": [n for n, _ in stream] == [n for n, _ in full],
            "equal": all(torch.equal(a, b) for (_, a), (_, b) in zip(stream, full, strict=True)),
            "gathers": len(calls),
        }
    report["num_params"] = len(full)
    report["still_partitioned"] = sum(p.numel() == 0 for p in params)
    out.with_name(f"{out.name}.rank{rank}").write_text(json.dumps(report))


@pytest.mark.slow
def test_zero3_buckets_gather_the_shards_in_fewer_collectives(tiny_model_dir, tmp_path):
    out = tmp_path / "report.json"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
           __file__, str(tiny_model_dir), str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((tmp_path / f"report.json.rank{r}").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["partitioned"] > 0 and rep["still_partitioned"] == rep["partitioned"]  # shards again after
        for stream in rep["streams"].values():
            assert stream["names_match"] and stream["equal"]
        gathers = {k: v["gathers"] for k, v in rep["streams"].items()}
        assert gathers["0"] == rep["num_params"] and gathers["512"] == 1 and 1 < gathers["0.01"] < gathers["0"]


if __name__ == "__main__":
    _zero3_scenario(Path(sys.argv[1]), Path(sys.argv[2]))
    release_process_group()  # as every `autoif` command does, once the model is gone: else gloo can abort the exit
