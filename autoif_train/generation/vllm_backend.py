"""vLLM backend: every prompt of a call goes into one batched `LLM.generate`, with `n` samples per request.

Prompts are rendered with the tokenizer's chat template (`LLM.generate` on token ids, so both backends see the same
prompt tokens), checked against the engine's context (a prompt that leaves no room for `max_new_tokens` raises
`ContextLengthError` naming it, before any work), and sampled with `SamplingParams(n=config.n)`. The engine is
built by `autoif_train.generation.vllm_engine` (fp32 + eager + a small memory share on CPU; `tensor_parallel_size` on GPUs).
Seeds: on GPU the request seed is `config.seed + prompt index`, so a prompt's samples do not depend on the rest
of the batch; on CPU vLLM rejects per-request seeds, so only the engine seed applies and runs are not repeatable
sample for sample. Greedy (`temperature=0`) runs once per prompt and returns `n` copies. Not protected against: a model whose tokenizer has no chat template (refused at start-up).
"""

from __future__ import annotations

from autoif_train.generation.base import (
    GenerationConfig,
    GenerationError,
    Generator,
    Prompt,
    apply_stop,
    resolve_model_path,
    vllm_kwargs,
)
from autoif_train.generation.chat import encode_prompts, end_of_turn_ids, require_chat_template
from autoif_train.generation.vllm_engine import build_llm, check_prompt_fits, on_cpu, require_vllm, sampling_params


class VLLMGenerator(Generator):
    """Generate with a vLLM engine in this process (`model` is a path, hub id or embedded model name).

    Parameters:
        progress: show vLLM's progress bar.
        engine_kwargs: the engine's settings, those of `vllm_engine.engine_kwargs` (`tensor_parallel_size`: GPUs
            the engine shards the model over; `gpu_memory_utilization`: memory share for weights + KV cache, on CPU
            host memory for the KV cache, `None` = 0.9 on GPU, a small share on CPU; `max_model_len`: the engine's
            context, `None` = the model's own limit; `enforce_eager`: skip graph capture, `None` = on for CPU only;
            `dtype`, `seed`), and anything else for `vllm.LLM` (e.g. `max_num_seqs`, `trust_remote_code`).
    """

    name = "vllm"

    def __init__(self, model: str, progress: bool = True, **engine_kwargs):
        require_vllm("backend 'vllm'")
        path = resolve_model_path(model)
        self.progress = progress
        try:
            self.llm = build_llm(path, **engine_kwargs)
        except (OSError, ValueError) as err:
            if type(err).__name__ == "ContextLengthError":
                raise
            raise GenerationError(f"vLLM could not start for model {model!r} (resolved to {path!r}): {err}") from err
        self.tokenizer = self.llm.get_tokenizer()
        require_chat_template(self.tokenizer, model)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.cpu = on_cpu()

    def generate(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        if self.llm is None:
            raise GenerationError("this VLLMGenerator was closed")
        encoded = encode_prompts(self.tokenizer, prompts)
        check_prompt_fits([len(ids) for ids in encoded], config.max_new_tokens, self.max_model_len, "vllm backend")
        greedy = config.greedy
        stop_ids = end_of_turn_ids(self.tokenizer, None, config.stop_token_ids)  # + the engine's generation_config
        params = []
        for i in range(len(prompts)):
            seed = None if config.seed is None or self.cpu else config.seed + i
            params.append(sampling_params(n=1 if greedy else config.n, seed=seed, **vllm_kwargs(config, stop_ids)))
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=self.progress)
        results = []
        for i, out in enumerate(outputs):
            texts = [apply_stop(c.text, config.stop) for c in sorted(out.outputs, key=lambda c: c.index)]
            texts = texts * config.n if greedy else texts  # vLLM refuses n > 1 for greedy: copies, as documented
            if len(texts) != config.n:
                raise GenerationError(f"vllm backend: prompt {i} got {len(texts)} completions, expected {config.n}")
            results.append(texts)
        return results

    def close(self) -> None:
        """Shut the engine down and free its memory (the object cannot generate afterwards)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        import gc

        gc.collect()
