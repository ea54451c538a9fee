"""Per-GPU memory of a training recipe, phase by phase, and whether it fits.

Two phases share each GPU: the train step, and sampling (online DPO and GRPO). A term is resident in one or
both. The terms, per GPU (P parameters, N training GPUs, L largest layer, b bytes per weight):

- model states: DeepSpeed's own estimators (`estimate_zero3_model_states_mem_needs` / `..._zero2_...`), split into
  ZeRO-3: params 2P/N + 2L, grads 4P/N + 2L, optimizer 12P/N; ZeRO-1/2: params 2P, grads 6P/N, optimizer 12P/N;
  DDP / one process (no DeepSpeed): params bP, grads bP, AdamW moments 2bP.
- reference model (DPO stages and GRPO with beta > 0, without LoRA): ZeRO-3 shards it (2P/N), ZeRO-2 / DDP keep a
  full copy (bP).
- activations of one micro-batch of T = batch x (2 for DPO's chosen + rejected, 1 for SFT and GRPO) x sequence tokens:
  without checkpointing T x layers x 2 B x (10h + 3 kv d + 4i); with it T x layers x h x 2 B (saved layer inputs) plus
  one layer's full set; plus logits T x vocab x 4 B (bf16 logits and their gradient).
- vLLM colocate: the engine holds `vllm_gpu_memory_utilization` x GPU memory: weights bP / TP, the rest is KV cache
  and workspace. Sleep mode releases it during the train step. Server mode puts it on dedicated GPUs.
- transformers sampling: ZeRO-3 gathers the full model on every rank (bP) plus the KV cache of
  generation_batch_size x num_samples x (prompt + max_new_tokens) x layers x 2 x kv_heads x head_dim x b.
- weight sync (ZeRO-3 + vLLM): one gathered bucket of `vllm_sync_bucket_mb` at a time, or the largest tensor (the
  embedding) when that is bigger; LoRA adds the merged copy of one module (`generation.weight_sync`).
- runtime overhead: CUDA context, NCCL buffers and allocator fragmentation, a flat 3 GiB.

A plan fits when both phases stay under GPU memory minus the margin and the vLLM share holds its weights plus KV for
one full-length sequence (vLLM's own start-up check).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from autoif_train.planning.model_shape import ModelShape

GiB = 2**30
RUNTIME_OVERHEAD = 3 * GiB
VLLM_WORKSPACE = int(1.5 * GiB)  # vLLM's profiled activation peak (4096 batched tokens) and CUDA graphs
VLLM_MAX_NUM_SEQS = 256  # vLLM's default concurrent sequences per engine
SERVER_MEMORY_SHARE = 0.9  # `trl vllm-serve` default gpu_memory_utilization
TRAIN, SAMPLE = "train", "sample"


@dataclass(frozen=True)
class Hardware:
    """Where the recipe runs: GPUs, their memory, the distributed setup, and speed assumptions for round time."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory: int = 80 * GiB
    distributed: str = "deepspeed"  # deepspeed | ddp | single
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    zero_init: bool = True
    accelerate_config: str | None = None
    gpu_tflops: float = 312.0  # dense bf16 peak (A100; H100 SXM ~989)
    hbm_tbps: float = 2.0  # memory bandwidth (A100 80GB; H100 ~3.35)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    def describe(self) -> str:
        setup = {"deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}", "ddp": "DDP", "single": "one process"}
        offload = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        extra = f", CPU offload of {' and '.join(offload)}" if offload else ""
        where = f" ({self.accelerate_config})" if self.accelerate_config else ""
        return (f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s) x {self.gpu_memory / GiB:.0f} GiB, "
                f"{setup[self.distributed]}{extra}{where}")


@dataclass(frozen=True)
class Settings:
    """The recipe's fields that memory and round time depend on."""

    stage: str
    weight_bytes: int = 2
    use_peft: bool = False
    lora_r: int = 16
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_length: int = 4096
    gradient_checkpointing: bool = True
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.3
    vllm_enable_sleep_mode: bool = False
    vllm_max_model_length: int | None = None
    vllm_sync_bucket_mb: float = 512.0
    generation_batch_size: int = 16
    num_samples: int = 8
    max_new_tokens: int = 256
    prompts_per_round: int = 64
    max_chosen: int = 2
    max_rejected: int = 2
    epochs_per_round: float = 1.0
    verifier_workers: int = 2
    prompt_tokens: int = 256  # assumed prompt length (chat template included)
    reference: bool = True  # GRPO with beta 0 loads no reference model
    rank_completions: int | None = None  # GRPO: completions each rank samples per generation batch

    @property
    def online(self) -> bool:
        """Whether the stage samples from the policy (online DPO rounds, GRPO generation batches)."""
        return self.stage in ("online_dpo", "grpo")

    @property
    def sequences_per_example(self) -> int:
        """Sequences per training example: DPO's chosen + rejected, one for SFT and GRPO."""
        return 2 if self.stage in ("dpo", "online_dpo") else 1

    def prompts_per_rank(self, world: int) -> int:
        """Prompts a rank samples per round (online DPO) or per generation batch (GRPO)."""
        if self.rank_completions is not None:
            return max(1, math.ceil(self.rank_completions / self.num_samples))
        return math.ceil(self.prompts_per_round / world)


@dataclass
class Term:
    """One row of the table: bytes per GPU, the phases it is resident in, and how it was computed."""

    name: str
    bytes: int
    phases: tuple[str, ...]
    note: str = ""


@dataclass
class Plan:
    """The per-GPU memory table, the verdict, and (when it does not fit) the settings that would fix it."""

    shape: ModelShape
    settings: Settings
    hardware: Hardware
    margin: float
    terms: list[Term]
    model_states_deepspeed: int | None
    activations: dict[str, int]
    vllm: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    breaking: str | None = None
    fixes: list[str] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return int(self.hardware.gpu_memory * (1 - self.margin))

    def peak(self, phase: str) -> int:
        return sum(t.bytes for t in self.terms if phase in t.phases)

    @property
    def phases(self) -> tuple[str, ...]:
        return (TRAIN, SAMPLE) if self.settings.online else (TRAIN,)

    @property
    def fits(self) -> bool:
        return not self.problems


# ----- model states (DeepSpeed's estimators) ---------------------------------------------------------------------
def deepspeed_gpu_bytes(shape: ModelShape, hw: Hardware) -> int:
    """Per-GPU model-state bytes from DeepSpeed's estimator for the ZeRO stage (a local copy without DeepSpeed)."""
    total, largest = shape.total_params, shape.largest_layer_params
    try:
        if hw.zero_stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            return estimate_zero3_model_states_mem_needs(
                total, largest, hw.gpus_per_node, hw.nodes, cpu_offload=hw.offload_optimizer,
                cpu_offload_params=hw.offload_params, zero_init=hw.zero_init)[1]
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(total, hw.gpus_per_node, hw.nodes,
                                                     cpu_offload=hw.offload_optimizer)[1]
    except ImportError:
        return zero_gpu_bytes_formula(total, largest, hw)


def zero_gpu_bytes_formula(total: int, largest: int, hw: Hardware) -> int:
    """DeepSpeed 0.19's estimator formulas (GPU side), used where DeepSpeed is not installed."""
    n = hw.world
    if hw.zero_stage == 3:
        if hw.offload_optimizer:
            return 4 * largest + (0 if hw.offload_params else int(2 * total / n))
        return 4 * largest + int(18 * total / n)
    return 2 * total if hw.offload_optimizer else 2 * total + int(18 * total / n)


def lora_params(shape: ModelShape, r: int) -> int:
    """LoRA parameters on every attention and MLP projection: r x (in + out) each."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return shape.num_layers * r * ((h + q) * 2 + (h + kv) * 2 + 3 * (h + i))


def model_state_terms(shape: ModelShape, s: Settings, hw: Hardware) -> tuple[list[Term], int | None]:
    """Policy params, gradients and optimizer state per GPU, and DeepSpeed's total (None where it does not apply)."""
    p, n, big, b = shape.total_params, hw.world, shape.largest_layer_params, s.weight_bytes
    both = (TRAIN, SAMPLE)
    if s.use_peft:
        base = (0 if hw.offload_params else int(b * p / n)) if hw.zero_stage == 3 else b * p
        lora = lora_params(shape, s.lora_r)
        return [Term("policy parameters (frozen base + LoRA)", base + b * lora, both, f"LoRA r={s.lora_r}"),
                Term("gradients (LoRA)", 4 * lora, both),
                Term("optimizer state (LoRA, fp32 Adam)", 12 * lora, both)], None
    if hw.distributed != "deepspeed":
        return [Term("policy parameters", b * p, both, f"{b} B x P"), Term("gradients", b * p, both),
                Term("optimizer state (AdamW moments)", 2 * b * p, both, "2 x weight dtype")], None
    total = deepspeed_gpu_bytes(shape, hw)
    if hw.zero_stage == 3:
        params = 2 * big + (0 if hw.offload_params else int(2 * p / n))
        grads = 2 * big + (0 if hw.offload_optimizer else int(4 * p / n))
        notes = ("2P/N shard + gathered largest layer", "fp32 partition + largest layer", "fp32 master, m, v: 12P/N")
    else:
        params, grads = 2 * p, 0 if hw.offload_optimizer else int(6 * p / n)
        notes = ("full bf16 copy", "bf16 + fp32 partitions: 6P/N", "fp32 master, m, v: 12P/N")
    optim = total - params - grads
    label = "offloaded to CPU" if hw.offload_optimizer else notes[2]
    return [Term("policy parameters", params, both, notes[0]), Term("gradients", grads, both, notes[1]),
            Term("optimizer state", optim, both, label)], total


def reference_term(shape: ModelShape, s: Settings, hw: Hardware) -> Term | None:
    if s.stage == "sft" or s.use_peft or not s.reference:
        return None  # SFT has none; LoRA's reference is the base model with the adapter disabled
    if hw.distributed == "deepspeed" and hw.zero_stage == 3:
        return Term("reference model", 0 if hw.offload_params else int(2 * shape.total_params / hw.world),
                    (TRAIN, SAMPLE), "ZeRO-3 shard")
    return Term("reference model", s.weight_bytes * shape.total_params, (TRAIN, SAMPLE), "full copy per GPU")


# ----- activations -----------------------------------------------------------------------------------------------
def sequence_tokens(s: Settings) -> int:
    """Tokens of one training sequence: prompt + completion when sampled (capped by max_length), else max_length."""
    return min(s.max_length, s.prompt_tokens + s.max_new_tokens) if s.online else s.max_length


def activation_bytes(shape: ModelShape, s: Settings, checkpointing: bool) -> int:
    """Activation memory of one micro-batch (formula in the module docstring)."""
    tokens = s.per_device_train_batch_size * s.sequences_per_example * sequence_tokens(s)
    h, i, kvd = shape.hidden_size, shape.intermediate_size, shape.num_kv_heads * shape.head_dim
    per_layer_token = 2 * (10 * h + 3 * kvd + 4 * i)
    logits = tokens * shape.vocab_size * 4
    if checkpointing:
        return tokens * shape.num_layers * h * 2 + tokens * per_layer_token + logits
    return tokens * shape.num_layers * per_layer_token + logits


# ----- sampling --------------------------------------------------------------------------------------------------
def max_model_len(shape: ModelShape, s: Settings) -> int:
    return s.vllm_max_model_length or shape.max_position_embeddings or (s.prompt_tokens + s.max_new_tokens)


def vllm_engine(shape: ModelShape, s: Settings, hw: Hardware, share: float) -> dict:
    """One vLLM engine's per-GPU budget: weights, KV room, concurrent sequences, and vLLM's start-up check."""
    tp = s.vllm_tensor_parallel_size
    reserved = int(share * hw.gpu_memory)
    weights = math.ceil(s.weight_bytes * shape.total_params / tp)
    kv_room = reserved - weights - VLLM_WORKSPACE
    per_token = shape.kv_bytes_per_token(s.weight_bytes, tp)
    seq = s.prompt_tokens + s.max_new_tokens
    need_one = max_model_len(shape, s) * per_token
    if s.vllm_mode == "colocate":
        prompts = s.prompts_per_rank(hw.world) * tp
    else:
        prompts = s.prompts_per_rank(hw.world) * hw.world
    seqs = prompts * s.num_samples
    concurrent = max(0, min(seqs, VLLM_MAX_NUM_SEQS, kv_room // (seq * per_token) if kv_room > 0 else 0))
    return {"tp": tp, "share": share, "reserved": reserved, "weights": weights, "kv_room": kv_room,
            "kv_per_token": per_token, "need_one": need_one, "max_model_len": max_model_len(shape, s),
            "prompts": prompts, "seqs": seqs, "concurrent": concurrent, "batch_kv": seqs * seq * per_token,
            "starts": kv_room >= need_one}


def transformers_sampling_terms(shape: ModelShape, s: Settings, hw: Hardware) -> list[Term]:
    """ZeRO-3's full gather per rank and the KV cache of one generate() call."""
    terms = []
    if hw.distributed == "deepspeed" and hw.zero_stage == 3:
        terms.append(Term("transformers sampling: gathered full model", s.weight_bytes * shape.total_params,
                          (SAMPLE,), "ZeRO-3 gathers P on every rank"))
    batch = min(s.generation_batch_size, s.prompts_per_rank(hw.world))
    kv = batch * s.num_samples * (s.prompt_tokens + s.max_new_tokens) * shape.kv_bytes_per_token(s.weight_bytes)
    terms.append(Term("transformers sampling: KV cache", kv, (SAMPLE,),
                      f"{batch} prompts x K={s.num_samples} x {s.prompt_tokens + s.max_new_tokens} tokens"))
    return terms


def sampling_terms(shape: ModelShape, s: Settings, hw: Hardware) -> tuple[list[Term], dict, list[str]]:
    """Sampling-phase terms on a training GPU, the vLLM engine figures, and any start-up problem."""
    if not s.online:
        return [], {}, []
    problems: list[str] = []
    if not s.use_vllm:
        return transformers_sampling_terms(shape, s, hw), {}, []
    tp = s.vllm_tensor_parallel_size
    share = s.vllm_gpu_memory_utilization if s.vllm_mode == "colocate" else SERVER_MEMORY_SHARE
    engine = vllm_engine(shape, s, hw, share)
    where = "vLLM" if s.vllm_mode == "colocate" else "vLLM server GPU"
    if not engine["starts"]:
        problems.append(
            f"{where}: weights {engine['weights'] / GiB:.1f} GiB (bf16 / TP {tp}) + workspace leave "
            f"{max(0, engine['kv_room']) / GiB:.1f} GiB of the {share:.2f} share ({engine['reserved'] / GiB:.1f} GiB) "
            f"for KV cache; one {engine['max_model_len']}-token sequence needs {engine['need_one'] / GiB:.1f} GiB")
    if shape.num_heads % tp:
        problems.append(f"vLLM needs the {shape.num_heads} attention heads divisible by "
                        f"vllm_tensor_parallel_size {tp}")
    terms = []
    if s.vllm_mode == "colocate":
        if hw.world % tp or tp > hw.gpus_per_node:
            problems.append(f"vllm_tensor_parallel_size {tp} must divide the {hw.world} processes and stay within a "
                            f"node ({hw.gpus_per_node} GPUs)")
        phases = (SAMPLE,) if s.vllm_enable_sleep_mode else (TRAIN, SAMPLE)
        terms.append(Term(f"vLLM weights (bf16 / TP {tp})", engine["weights"], phases,
                          "released in the train step (sleep mode)" if s.vllm_enable_sleep_mode else ""))
        terms.append(Term(f"vLLM KV cache + workspace (rest of the {share:.2f} share)",
                          max(0, engine["reserved"] - engine["weights"]), phases))
    if hw.distributed == "deepspeed" and hw.zero_stage == 3:
        largest = s.weight_bytes * shape.embedding_params
        bucket = max(int(s.vllm_sync_bucket_mb * 2**20), largest)
        if s.use_peft:
            terms.append(Term("weight sync: one bucket + a merged LoRA module", bucket + largest, (SAMPLE,),
                              f"vllm_sync_bucket_mb {s.vllm_sync_bucket_mb:g}; one module merged at a time"))
        else:
            terms.append(Term("weight sync: one gathered bucket", bucket, (SAMPLE,),
                              f"vllm_sync_bucket_mb {s.vllm_sync_bucket_mb:g} or the embedding, the larger"))
    return terms, engine, problems


# ----- the plan --------------------------------------------------------------------------------------------------
def plan_memory(shape: ModelShape, s: Settings, hw: Hardware, margin: float = 0.05, suggest: bool = True) -> Plan:
    """The per-GPU plan for `s` on `hw`; when it does not fit and `suggest`, also the settings that would fix it."""
    terms, ds_total = model_state_terms(shape, s, hw)
    ref = reference_term(shape, s, hw)
    if ref is not None:
        terms.append(ref)
    act = {on: activation_bytes(shape, s, on) for on in (True, False)}
    state = "on" if s.gradient_checkpointing else "off"
    other = "off" if s.gradient_checkpointing else "on"
    alternative = act[not s.gradient_checkpointing] / GiB
    terms.append(Term(f"activations (gradient checkpointing {state}; {other}: {alternative:.1f})",
                      act[s.gradient_checkpointing], (TRAIN,),
                      f"micro-batch {s.per_device_train_batch_size} x {sequence_tokens(s)} tokens"))
    sample_terms, engine, problems = sampling_terms(shape, s, hw)
    terms += sample_terms
    terms.append(Term("runtime overhead (CUDA context, NCCL, fragmentation)", RUNTIME_OVERHEAD, (TRAIN, SAMPLE)))
    plan = Plan(shape, s, hw, margin, terms, ds_total, act, engine, problems)
    breaking = None
    for phase in plan.phases:
        peak = plan.peak(phase)
        if peak > plan.budget:
            top = max((t for t in terms if phase in t.phases), key=lambda t: t.bytes)
            where = "the train step" if phase == TRAIN else "sampling"
            problems.append(f"{where} needs {peak / GiB:.1f} GiB per GPU, over the {plan.budget / GiB:.1f} GiB budget")
            breaking = breaking or f"{top.name} = {top.bytes / GiB:.1f} GiB"
    if problems and breaking is None:
        breaking = f"vLLM weights (bf16 / TP {s.vllm_tensor_parallel_size}) = {engine.get('weights', 0) / GiB:.1f} GiB"
    plan.breaking = breaking if problems else None
    if problems and suggest:
        plan.fixes = suggest_fixes(shape, s, hw, margin)
    return plan


def _candidates(s: Settings, hw: Hardware) -> list[list[tuple[str, dict, dict]]]:
    """Groups of alternative changes; a fix takes at most one change from each of up to two groups."""
    groups = []
    if s.online and s.use_vllm:
        tps = [t for t in (2, 4, 8)
               if t <= hw.gpus_per_node and hw.world % t == 0 and t != s.vllm_tensor_parallel_size]
        groups.append([(f"vllm_tensor_parallel_size: {t}", {"vllm_tensor_parallel_size": t}, {}) for t in tps])
        if s.vllm_mode == "colocate" and not s.vllm_enable_sleep_mode:
            groups.append([("vllm_enable_sleep_mode: true", {"vllm_enable_sleep_mode": True}, {})])
        if s.vllm_mode == "colocate":
            groups.append([(f"vllm_gpu_memory_utilization: {x}", {"vllm_gpu_memory_utilization": x}, {})
                           for x in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7) if x != s.vllm_gpu_memory_utilization])
        if not s.vllm_max_model_length:
            length = 1024 * math.ceil((s.prompt_tokens + s.max_new_tokens) / 1024)
            groups.append([(f"vllm_max_model_length: {length}", {"vllm_max_model_length": length}, {})])
    if s.online and not s.use_vllm:
        sizes = [g for g in (32, 16, 8, 4, 2, 1) if g < s.generation_batch_size]
        groups.append([(f"generation_batch_size: {g}", {"generation_batch_size": g}, {}) for g in sizes])
        groups.append([(f"use_vllm: true, vllm_tensor_parallel_size: {t}, vllm_enable_sleep_mode: true",
                        {"use_vllm": True, "vllm_mode": "colocate", "vllm_tensor_parallel_size": t,
                         "vllm_enable_sleep_mode": True, "vllm_max_model_length": 4096}, {})
                       for t in (1, 2, 4, 8) if t <= hw.gpus_per_node and hw.world % t == 0])
    if not s.gradient_checkpointing:
        groups.append([("gradient_checkpointing: true", {"gradient_checkpointing": True}, {})])
    if s.per_device_train_batch_size > 1:
        ga = s.gradient_accumulation_steps * s.per_device_train_batch_size
        groups.append([(f"per_device_train_batch_size: 1, gradient_accumulation_steps: {ga}",
                        {"per_device_train_batch_size": 1, "gradient_accumulation_steps": ga}, {})])
    if hw.distributed != "deepspeed" or hw.zero_stage < 3:
        name = "zero3_multinode" if hw.nodes > 1 else "zero3"
        groups.append([(f"accelerate_config: {name} (ZeRO-3)", {}, {"distributed": "deepspeed", "zero_stage": 3})])
    groups.append([(f"--nodes {hw.nodes * k} (more GPUs)", {}, {"nodes": hw.nodes * k}) for k in (2, 4)])
    return [g for g in groups if g]


def suggest_fixes(shape: ModelShape, s: Settings, hw: Hardware, margin: float, limit: int = 3) -> list[str]:
    """Up to `limit` single or paired setting changes under which the plan fits, fewest changes first."""
    groups = _candidates(s, hw)
    found: list[tuple[int, tuple, tuple, int, str]] = []
    fitting_singles: set[str] = set()
    for size in (1, 2):
        for combo_groups in itertools.combinations(range(len(groups)), size):
            for picks in itertools.product(*(range(len(groups[g])) for g in combo_groups)):
                combo = [groups[g][k] for g, k in zip(combo_groups, picks)]
                if size > 1 and any(c[0] in fitting_singles for c in combo):
                    continue  # one of its changes already fits alone
                settings, hardware = s, hw
                for _, s_changes, hw_changes in combo:
                    settings, hardware = replace(settings, **s_changes), replace(hardware, **hw_changes)
                plan = plan_memory(shape, settings, hardware, margin, suggest=False)
                if plan.fits:
                    if size == 1:
                        fitting_singles.add(combo[0][0])
                    peak = max(plan.peak(p) for p in plan.phases)
                    label = " + ".join(c[0] for c in combo)
                    found.append((size, combo_groups, picks, peak, f"{label}  (peak {peak / GiB:.1f} GiB)"))
        if len(found) >= limit:
            break
    # fewest changes, then the earlier (less invasive) groups, then each group's preferred value
    found.sort(key=lambda f: f[:3])
    return [f[4] for f in found[:limit]]
