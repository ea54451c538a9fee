"""vLLM policy sampling for the online-DPO trainer: colocate or server mode, weights pushed after each update.

`VLLMPolicy` is the vLLM `PolicySampler` of `autoif_train.generation.policy`.
It reuses TRL's `trl.generation.VLLMGeneration` for generation and the push itself (colocate `load_weights`, the
server's packed NCCL broadcast); the weights pushed come from `generation.weight_sync.named_weights`: ZeRO-3
shards gathered `vllm_sync_bucket_mb` MiB per collective, LoRA merged one module at a time into copies (FSDP keeps
TRL's iterators). Each push logs its seconds and gathers. Every rank must call `sample` and `sync_weights`
together (the gathers are collective).

What it changes on top of TRL: the colocated engine is built by `autoif_train.generation.vllm_engine` (TRL 1.16 exposes no
`enforce_eager`; on CPU compiling the graphs takes ~4 minutes per start), with fp32 and a small memory share on
CPU; on CPU the colocated sync goes through vLLM's in-place `reload_weights` (the CPU backend repacks linear
weights into kernel handles, so TRL's per-tensor `load_weights` cannot write into them); prompts are checked against the engine context before sampling (clear `ContextLengthError`); server mode
waits for the server with a clear `ServerUnreachableError`. Server mode needs `vllm serve` with the NCCL weight
transfer engine on CUDA: TRL's client cannot push weights from a CPU trainer, so on CPU server mode samples but
`sync_weights` raises instead of silently sampling from stale weights.

Not protected against: sleep mode on CPU (vLLM's CPU backend has no sleep/wake), or a server that another
trainer also pushes weights into.
"""

from __future__ import annotations

import logging
import os
import time

from autoif_train.generation.base import Completion, vllm_kwargs
from autoif_train.generation.chat import end_of_turn_ids, make_completion
from autoif_train.generation.policy import policy_generation_config
from autoif_train.generation.vllm_engine import (
    check_max_model_len,
    check_prompt_fits,
    engine_kwargs,
    on_cpu,
    require_vllm,
    wait_for_server,
)

logger = logging.getLogger(__name__)


def generation_class():
    """`VLLMGeneration` subclass whose colocated engine starts with our engine settings (imported lazily); the
    online-DPO `VLLMPolicy` and the GRPO trainer (`training.grpo`) both generate and push weights through it."""
    from trl.generation.vllm_generation import VLLMGeneration

    class AutoIFVLLMGeneration(VLLMGeneration):
        def __init__(self, *args, extra_engine_kwargs: dict | None = None, sync_bucket_mb: float = 512.0,
                     **kwargs):
            self.sync_bucket_mb = sync_bucket_mb
            self.gathers = 0
            self.extra_engine_kwargs = extra_engine_kwargs or {}
            super().__init__(*args, **kwargs)

        def _init_vllm(self):
            if self.mode == "server":
                return self._init_server()
            if self.mode != "colocate":
                raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {self.mode!r}")
            self._init_colocate()

        def _init_server(self):
            from trl.generation.vllm_client import VLLMClient

            accelerator = self.accelerator
            if accelerator.is_main_process:
                base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
                wait_for_server(base_url, self.server_timeout)
                self.vllm_client = VLLMClient(base_url=base_url, group_port=self.group_port, connection_timeout=5)
                # vLLM's weight-transfer engine is NCCL only: a CPU trainer can sample from the server but not push
                self.can_push_weights = accelerator.device.type == "cuda"
                if self.can_push_weights:
                    self.vllm_client.init_communicator(device=accelerator.device)
            accelerator.wait_for_everyone()

        def _init_colocate(self):
            import torch
            from trl.trainer.utils import ensure_master_addr_port
            from vllm import LLM

            accelerator = self.accelerator
            tp = self.tensor_parallel_size
            if accelerator.num_processes % tp:
                raise ValueError(
                    f"vllm_tensor_parallel_size ({tp}) must divide the number of processes ({accelerator.num_processes})"
                )
            if tp > 1:
                self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                    [list(range(i * tp, (i + 1) * tp)) for i in range(accelerator.num_processes // tp)]
                )
            # external_launcher: the engine runs inside this rank's process, so the trainer can load weights directly
            os.environ["RANK"] = str(accelerator.process_index)
            os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
            os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
            ensure_master_addr_port()
            kwargs = engine_kwargs(
                self.model.name_or_path, tensor_parallel_size=tp, gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_length, seed=accelerator.process_index // tp,
                distributed_executor_backend="external_launcher", max_num_batched_tokens=4096,
                max_num_seqs=self.max_num_seqs, enable_sleep_mode=self.enable_sleep_mode,
                trust_remote_code=self.trust_remote_code, model_impl=getattr(self, "model_impl", "auto"),
                **self.extra_engine_kwargs,
            )
            self.llm = LLM(**kwargs)
            if self.enable_sleep_mode:
                self.llm.sleep(level=2)
            self._llm_weights_sleeping = self.enable_sleep_mode
            accelerator.wait_for_everyone()

        def _iter_named_params(self):
            if self._dist.is_fsdp:
                yield from super()._iter_named_params()
                return
            from autoif_train.generation.weight_sync import named_weights

            def gather(params):
                self.gathers += 1
                return self._dist.gather_params(params)

            yield from named_weights(self.model, gather, self.sync_bucket_mb)

        def sync_weights(self):
            if self.mode == "server" and not getattr(self, "can_push_weights", True):
                raise NotImplementedError(
                    "vllm_mode: server cannot push weights from a CPU trainer (vLLM's weight transfer is NCCL on "
                    "CUDA); use vllm_mode: colocate on CPU"
                )
            if self.mode == "colocate" and on_cpu():
                return self._reload_in_place()
            super().sync_weights()

        def _reload_in_place(self):
            """Colocate sync through vLLM's in-place reload (the CPU path).

            vLLM's CPU backend repacks every linear weight into a oneDNN/SGL kernel handle after loading and drops
            the original parameter, so TRL's per-tensor `model.load_weights` fails there ("no attribute
            weight_loader"). `reload_weights` restores each layer in checkpoint format, loads it and repacks it.
            It buffers a layer's tensors until the layer is complete, so ZeRO-3 gathered tensors and merged LoRA
            weights are copied before their scope ends (one tensor at a time, freed once its layer is loaded).
            """
            from accelerate.utils import is_peft_model

            # gathered ZeRO-3 tensors are freed and merged LoRA weights unmerged when the iterator moves on
            copy = self._dist.is_zero3 or is_peft_model(self.model)

            def tensors():
                for name, tensor in self._iter_named_params():
                    yield name, tensor.detach().clone() if copy else tensor.detach()

            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
            self.llm.reset_prefix_cache()

    return AutoIFVLLMGeneration


class VLLMPolicy:
    """Samples K `Completion` records per prompt with vLLM; `sync_weights()` pushes the trainer's current weights.

    Prompts arrive as token ids (`generation.chat.encode_prompt`); every rank passes the same number of prompts,
    which TRL's server-mode and tensor-parallel slicing (`rank * len(prompts)`) require. Sampling follows the
    recipe's `GenerationConfig` (`generation.base.vllm_kwargs`) and stops on every end-of-turn id.
    """

    def __init__(self, trainer, config):
        require_vllm("use_vllm: true")
        self.trainer = trainer
        self.config = config
        self.tokenizer = getattr(trainer, "processing_class", None) or trainer.tokenizer
        model = trainer.model
        self.mode = getattr(config, "vllm_mode", "colocate")
        max_len = getattr(config, "vllm_max_model_length", None)
        if self.mode == "colocate":
            check_max_model_len(model.name_or_path, max_len)
        extra = {}
        if getattr(config, "vllm_enforce_eager", None) is not None:
            extra["enforce_eager"] = config.vllm_enforce_eager
        base = getattr(trainer.accelerator, "unwrap_model", lambda m: m)(model)
        self.stop_ids = end_of_turn_ids(self.tokenizer, getattr(base, "generation_config", None),
                                        getattr(config, "stop_token_ids", None))
        self.gen_config = policy_generation_config(config)
        params = vllm_kwargs(self.gen_config, self.stop_ids)
        generation_cls = generation_class()
        self.generation = generation_cls(
            model=model, accelerator=trainer.accelerator, processing_class=self.tokenizer, mode=self.mode,
            server_base_url=getattr(config, "vllm_server_base_url", None),
            server_timeout=getattr(config, "vllm_server_timeout", 240.0),
            tensor_parallel_size=getattr(config, "vllm_tensor_parallel_size", 1),
            gpu_memory_utilization=getattr(config, "vllm_gpu_memory_utilization", None),
            max_model_length=max_len, enable_sleep_mode=getattr(config, "vllm_enable_sleep_mode", False),
            temperature=params.pop("temperature"), top_p=params.pop("top_p"), top_k=params.pop("top_k"),
            min_p=params.pop("min_p"), repetition_penalty=params.pop("repetition_penalty"),
            max_completion_length=params.pop("max_tokens"), logprobs=None, generation_kwargs=params,
            extra_engine_kwargs=extra, sync_bucket_mb=getattr(config, "vllm_sync_bucket_mb", 512.0),
        )
        self.syncs = 0
        self.last_sync: dict = {}

    @property
    def max_model_len(self) -> int | None:
        llm = getattr(self.generation, "llm", None)
        return llm.llm_engine.model_config.max_model_len if llm is not None else None

    def sample(self, prompt_ids: list[list[int]], num_samples: int) -> list[list[Completion]]:
        """`num_samples` completions for each prompt, in prompt order."""
        if self.max_model_len is not None:
            check_prompt_fits([len(x) for x in prompt_ids], self.config.max_new_tokens, self.max_model_len,
                              "vllm sampler")
        repeated = [list(x) for x in prompt_ids for _ in range(num_samples)]  # TRL's layout: each prompt K times
        _, completion_ids, _, _ = self.generation.generate(prompts=repeated, images=None, num_generations=num_samples)
        if len(completion_ids) != len(repeated):
            raise RuntimeError(f"vLLM returned {len(completion_ids)} completions for {len(repeated)} requests")
        out = [make_completion(self.tokenizer, ids, self.stop_ids, self.config.max_new_tokens) for ids in completion_ids]
        return [out[i : i + num_samples] for i in range(0, len(out), num_samples)]

    def sync_weights(self) -> None:
        """Push the trainer's current weights into vLLM (collective: every rank calls it)."""
        t0, gathers = time.time(), self.generation.gathers
        self.generation.sync_weights()
        self.syncs += 1
        self.last_sync = {"seconds": time.time() - t0, "gathers": self.generation.gathers - gathers}
        logger.info("weight sync %d: %.2f s, %d gathers (vllm_sync_bucket_mb=%s)", self.syncs,
                    self.last_sync["seconds"], self.last_sync["gathers"], self.generation.sync_bucket_mb)

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-probability vLLM assigns to each token of `completion_ids` after `prompt_ids` (colocate mode)."""
        if self.mode != "colocate":
            raise NotImplementedError("sequence_logprobs reads the colocated engine; server mode has none here")
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        out = self.generation.llm.generate(
            [{"prompt_token_ids": list(prompt_ids) + list(completion_ids)}], sampling_params=params, use_tqdm=False
        )[0]
        entries = out.prompt_logprobs[len(prompt_ids) :]
        return [entry[token].logprob for entry, token in zip(entries, completion_ids, strict=True)]

    def close(self) -> None:
        """Drop the engine (frees its memory once no other reference is left)."""
        self.generation = None


