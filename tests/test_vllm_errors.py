"""The vLLM layer's clear errors and CPU defaults; none of these needs vLLM itself, so they run in every environment.

Run: python -m pytest tests/test_vllm_errors.py -q
"""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from autoif_train.generation import vllm_engine
from autoif_train.generation.vllm_engine import (
    ContextLengthError,
    ServerUnreachableError,
    VLLMUnavailableError,
    check_max_model_len,
    check_prompt_fits,
    engine_kwargs,
    require_vllm,
    wait_for_server,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(status: int, port: int, delay: float = 0.0):
    """Start a /health server answering `status` on `port` after `delay` seconds; returns a stop function."""
    handler = type("Handler", (_Health,), {"status": status})
    started = {}

    def run():
        time.sleep(delay)
        started["server"] = http.server.HTTPServer(("127.0.0.1", port), handler)
        started["server"].serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop():
        if "server" in started:
            started["server"].shutdown()
            started["server"].server_close()

    return stop


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_named_with_the_install_command():
    with pytest.raises(VLLMUnavailableError, match=r"not installed.*pip install -e '\.\[vllm\]'.*make install-vllm"):
        require_vllm()
    from autoif_train.generation.vllm_policy import VLLMPolicy

    # the sampler refuses before touching the trainer (an empty namespace would fail later otherwise)
    with pytest.raises(VLLMUnavailableError, match="use_vllm: true"):
        VLLMPolicy(SimpleNamespace(), SimpleNamespace(use_vllm=True))


def test_unreachable_server_fails_within_the_timeout_naming_url_and_setting():
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError) as err:
        wait_for_server(url, timeout=1.0, interval=0.2)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 5.0
    message = str(err.value)
    assert url in message and "1 s" in message and "vllm_server_timeout" in message and "vllm_server_base_url" in message


def test_server_that_comes_up_late_is_waited_for():
    port = _free_port()
    stop = _serve(200, port, delay=0.8)
    try:
        start = time.monotonic()
        wait_for_server(f"http://127.0.0.1:{port}", timeout=10.0, interval=0.2)
        assert 0.7 <= time.monotonic() - start < 5.0
    finally:
        stop()


def test_unhealthy_server_is_reported_with_its_status():
    port = _free_port()
    stop = _serve(503, port)
    try:
        time.sleep(0.2)
        with pytest.raises(ServerUnreachableError, match="HTTP 503"):
            wait_for_server(f"http://127.0.0.1:{port}", timeout=0.6, interval=0.2)
    finally:
        stop()


def test_prompt_that_leaves_no_room_names_the_prompt_and_numbers():
    check_prompt_fits([10, 90], max_new_tokens=38, max_model_len=128, where="x")  # 90 + 38 = 128 fits exactly
    with pytest.raises(ContextLengthError) as err:
        check_prompt_fits([10, 91, 500], max_new_tokens=38, max_model_len=128, where="vllm sampler")
    message = str(err.value)
    assert message.startswith("vllm sampler: prompt 1 has 91 tokens") and "129" in message and "128" in message


def test_max_model_len_beyond_the_model_context_is_refused(tiny_model_dir):
    check_max_model_len(str(tiny_model_dir), None)
    check_max_model_len(str(tiny_model_dir), 512)
    with pytest.raises(ContextLengthError, match=r"max_model_len=1024 .* \(512 positions"):
        check_max_model_len(str(tiny_model_dir), 1024)
    with pytest.raises(ContextLengthError):
        engine_kwargs(str(tiny_model_dir), max_model_len=1024)


def test_a_broken_model_config_is_bad_input_naming_the_file(tmp_path):
    from autoif_train.core.errors import InputError

    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512,\n oops}')
    with pytest.raises(InputError, match=r"config\.json:2: not valid JSON"):
        check_max_model_len(str(tmp_path), 1024)


def test_cpu_engine_defaults_and_overrides(tiny_model_dir, monkeypatch):
    for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(vllm_engine, "on_cpu", lambda: True)
    kwargs = engine_kwargs(str(tiny_model_dir), seed=3)
    assert kwargs["enforce_eager"] is True and kwargs["dtype"] == "float32" and kwargs["seed"] == 3
    assert kwargs["gpu_memory_utilization"] == vllm_engine.CPU_MEMORY_SHARE
    assert kwargs["distributed_executor_backend"] == "uni"  # one process: no engine-core / worker re-imports
    import os

    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(vllm_engine.CPU_KV_CACHE_GIB)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    explicit = engine_kwargs(
        str(tiny_model_dir), enforce_eager=False, gpu_memory_utilization=0.2, dtype="bfloat16",
        tensor_parallel_size=2,
    )
    assert explicit["enforce_eager"] is False and explicit["gpu_memory_utilization"] == 0.2
    assert explicit["dtype"] == "bfloat16" and "distributed_executor_backend" not in explicit
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        engine_kwargs(str(tiny_model_dir), gpu_memory_utilization=1.5)


def test_gpu_defaults(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(vllm_engine, "on_cpu", lambda: False)
    kwargs = engine_kwargs(str(tiny_model_dir))
    assert kwargs["enforce_eager"] is False and kwargs["dtype"] == "auto" and kwargs["gpu_memory_utilization"] == 0.9
    assert "distributed_executor_backend" not in kwargs
