"""The printed plan: memory table, sampling topology, a rough round time, and the verdict with its fixes.

Round-time assumptions (rough, stated in the output):
- every completion runs to `max_new_tokens` and every prompt yields max_chosen x max_rejected pairs (upper bounds);
- decoding is memory-bound: a step reads the engine's weights per GPU plus the KV cache of its running sequences, at
  50% of HBM bandwidth for vLLM and 25% for transformers `generate`; prefill and TP all-reduces are ignored;
- training runs at 40% of the GPU's dense bf16 peak, with 6P FLOPs per token for the policy, +2P for recomputation
  under gradient checkpointing and +2P for the reference forward;
- the weight sync costs ~1 ms per gather (one per `vllm_sync_bucket_mb` bucket, or per tensor at 0) plus the
  16-bit weights at 50 GB/s;
- scoring runs on CPU workers (not estimated here).
"""

from __future__ import annotations

import math

from autoif_train.planning.memory import TRAIN, GiB, Plan, sequence_tokens

VLLM_DECODE_EFFICIENCY, HF_DECODE_EFFICIENCY, MFU = 0.5, 0.25, 0.4
SYNC_LATENCY_S, SYNC_BYTES_PER_S = 1e-3, 50e9


def _gib(n: int) -> str:
    return f"{n / GiB:8.1f}"


def sync_gathers(shape, s) -> int:
    """Collective gathers per weight push: one per tensor at `vllm_sync_bucket_mb: 0`, else about one per bucket
    (never more than one per tensor)."""
    bucket = s.vllm_sync_bucket_mb * 2**20
    if bucket <= 0:
        return shape.num_tensors
    return min(shape.num_tensors, max(1, math.ceil(s.weight_bytes * shape.total_params / bucket)))


def _decode_seconds(weights_bytes: float, concurrent: int, ctx: float, kv_per_token: int, tokens: int,
                    hw, efficiency: float) -> float:
    step = (weights_bytes + concurrent * ctx * kv_per_token) / (hw.hbm_tbps * 1e12 * efficiency)
    return step * tokens


def round_time(plan: Plan) -> list[str]:
    """Rough seconds per online round (GRPO: per generation batch): sampling, weight sync, training (assumptions in
    the module docstring)."""
    s, hw, shape = plan.settings, plan.hardware, plan.shape
    p, world = shape.total_params, hw.world
    avg_ctx = s.prompt_tokens + s.max_new_tokens / 2
    lines = []
    if s.use_vllm:
        e = plan.vllm
        if not e["concurrent"]:
            return ["sampling   n/a: the vLLM share has no room for a single sequence"]
        waves = math.ceil(e["seqs"] / e["concurrent"])
        sample_s = waves * _decode_seconds(e["weights"], e["concurrent"], avg_ctx, e["kv_per_token"],
                                           s.max_new_tokens, hw, VLLM_DECODE_EFFICIENCY)
        tokens = s.prompts_per_rank(world) * world * s.num_samples * s.max_new_tokens
        lines.append(f"sampling   {sample_s:8.0f} s  {tokens:,} new tokens; {waves} wave(s) of {e['concurrent']} "
                     f"sequences per engine, decode memory-bound at {VLLM_DECODE_EFFICIENCY:.0%} of "
                     f"{hw.hbm_tbps} TB/s")
        if hw.distributed == "deepspeed" and hw.zero_stage == 3:
            gathers = sync_gathers(shape, s)
            sync_s = gathers * SYNC_LATENCY_S + s.weight_bytes * p / SYNC_BYTES_PER_S
            lines.append(f"weight sync{sync_s:8.0f} s  {gathers} gathers of {s.vllm_sync_bucket_mb:g} MiB buckets, "
                         f"{s.weight_bytes * p / GiB:.0f} GiB (~1 ms each + 50 GB/s; per tensor: "
                         f"{shape.num_tensors})")
    else:
        per_rank = s.prompts_per_rank(world)
        batch = max(1, min(s.generation_batch_size, per_rank))
        calls = math.ceil(per_rank / batch)
        sample_s = calls * _decode_seconds(s.weight_bytes * p, batch * s.num_samples, avg_ctx,
                                           shape.kv_bytes_per_token(s.weight_bytes), s.max_new_tokens, hw,
                                           HF_DECODE_EFFICIENCY)
        lines.append(f"sampling   {sample_s:8.0f} s  transformers generate: {calls} call(s) of {batch} prompts x "
                     f"K={s.num_samples} per rank, decode at {HF_DECODE_EFFICIENCY:.0%} of {hw.hbm_tbps} TB/s")
    if s.rank_completions is not None:  # GRPO: every sampled completion is one training sequence
        examples, unit = s.rank_completions * world, "completions"
    else:
        examples, unit = s.prompts_per_round * s.max_chosen * s.max_rejected * s.epochs_per_round, "pairs"
    reference = s.reference and not s.use_peft
    flops_per_token = (6 + (2 if s.gradient_checkpointing else 0) + (2 if reference else 0)) * p
    seqs = s.sequences_per_example
    train_s = examples * seqs * sequence_tokens(s) * flops_per_token / (world * hw.gpu_tflops * 1e12 * MFU)
    steps = math.ceil(examples / (world * s.per_device_train_batch_size * s.gradient_accumulation_steps))
    lines.append(f"training   {train_s:8.0f} s  <= {examples:,.0f} {unit} ({steps} optimizer steps) x {seqs} x "
                 f"{sequence_tokens(s)} tokens at {MFU:.0%} of {hw.gpu_tflops:.0f} TFLOP/s per GPU")
    return lines


def topology(plan: Plan) -> list[str]:
    """How sampling is laid out over the GPUs."""
    s, hw = plan.settings, plan.hardware
    if not s.online:
        return [f"no sampling (stage {s.stage})"]
    per_rank = s.prompts_per_rank(hw.world)
    if not s.use_vllm:
        return [f"transformers generate on every rank: {per_rank} prompts x K={s.num_samples} per rank per round, "
                f"{min(s.generation_batch_size, per_rank)} prompts per generate() call"]
    e = plan.vllm
    seq = s.prompt_tokens + s.max_new_tokens
    if s.vllm_mode == "colocate":
        head = (f"vLLM colocate: {hw.world // e['tp'] if hw.world % e['tp'] == 0 else '?'} engine(s) of TP "
                f"{e['tp']} on the training GPUs, {s.vllm_gpu_memory_utilization:.2f} of each GPU"
                f"{', asleep during the train step' if s.vllm_enable_sleep_mode else ', held during the train step'}")
    else:
        head = (f"vLLM server: TP {e['tp']} on {e['tp']} dedicated GPU(s) beside the {hw.world} training GPUs "
                f"(share {e['share']:.2f}); weights pushed over NCCL")
    return [
        head,
        f"per engine per {'generation batch' if s.rank_completions else 'round'}: {e['prompts']} prompts x K={s.num_samples} = {e['seqs']} sequences of <= {seq} "
        f"tokens; KV {e['kv_per_token'] / 1024:.0f} KiB/token/GPU, {e['batch_kv'] / GiB:.1f} GiB for the whole batch",
        f"KV room {max(0, e['kv_room']) / GiB:.1f} GiB per GPU -> {e['concurrent']} sequences at once "
        f"(vLLM max_num_seqs {256}); max_model_len {e['max_model_len']} needs {e['need_one'] / GiB:.2f} GiB",
    ]


def render(plan: Plan, recipe: str = "") -> str:
    """The full text report."""
    s, hw, shape = plan.settings, plan.hardware, plan.shape
    out = [f"autoif plan: {recipe}" if recipe else "autoif plan",
           f"model:    {shape.name}  [{shape.source}]",
           f"          {shape.total_params / 1e9:.2f}B parameters, {shape.num_layers} layers, hidden "
           f"{shape.hidden_size}, {shape.num_heads} heads / {shape.num_kv_heads} KV heads, vocab {shape.vocab_size}",
           f"hardware: {hw.describe()}",
           f"recipe:   stage {s.stage}, {s.weight_bytes * 8}-bit weights, micro-batch {s.per_device_train_batch_size}"
           f" x {sequence_tokens(s)} tokens" + (f", prompt {s.prompt_tokens} (assumed) + {s.max_new_tokens} new tokens"
                                                if s.online else ""),
           "", "per-GPU memory (GiB)".ljust(56) + "  train step" + ("    sampling" if s.online else "")]
    for term in plan.terms:
        cells = "".join(f"    {_gib(term.bytes) if ph in term.phases else '       -'}" for ph in plan.phases)
        note = f"  {term.note}" if term.note else ""
        out.append(f"  {term.name}".ljust(56) + cells + note)
    out.append("  total".ljust(56) + "".join(f"    {_gib(plan.peak(ph))}" for ph in plan.phases))
    out.append(f"  budget ({hw.gpu_memory / GiB:.0f} GiB - {plan.margin:.0%} margin)".ljust(56)
               + "".join(f"    {_gib(plan.budget)}" for _ in plan.phases))
    if plan.model_states_deepspeed is not None:
        name = "zero3" if hw.zero_stage == 3 else "zero2"
        out.append(f"  model states = DeepSpeed estimate_{name}_model_states_mem_needs: "
                   f"{plan.model_states_deepspeed / GiB:.2f} GiB per GPU")
    out += ["", "sampling topology:"] + [f"  {line}" for line in topology(plan)]
    if s.online and s.use_vllm and hw.distributed == "deepspeed" and hw.zero_stage == 3:
        gather = s.weight_bytes * shape.total_params
        kv = min(s.generation_batch_size, s.prompts_per_rank(hw.world)) * s.num_samples * (
            s.prompt_tokens + s.max_new_tokens) * shape.kv_bytes_per_token(s.weight_bytes)
        out.append(f"  (use_vllm: false would gather {gather / GiB:.1f} GiB per rank plus {kv / GiB:.1f} GiB of "
                   "KV cache)")
    if s.online:
        out += ["", "round time (rough, upper bounds; assumptions in autoif_train/planning/report.py):"]
        out += [f"  {line}" for line in round_time(plan)]
    ckpt = (s.weight_bytes + (12 if not s.use_peft else 0)) * shape.total_params
    out += ["", f"checkpoint: ~{ckpt / 1e9:,.0f} GB each (weights + fp32 optimizer state); set save_total_limit"]
    out.append("formulas: activations = tokens x layers x 2 B x (10h + 3 kv_heads head_dim + 4i) without "
               "checkpointing, tokens x layers x h x 2 B + one layer with it, + tokens x vocab x 4 B logits;")
    out.append("          KV cache = sequences x tokens x layers x 2 x kv_heads x head_dim x 2 B "
               "(kv_heads / TP in vLLM)")
    out.append("")
    if plan.fits:
        phase, peak = max(((ph, plan.peak(ph)) for ph in plan.phases), key=lambda x: x[1])
        where = "the train step" if phase == TRAIN else "sampling"
        out.append(f"fits: peak {peak / GiB:.1f} GiB per GPU in {where}, {(plan.budget - peak) / GiB:.1f} GiB under "
                   f"the budget")
    else:
        out.append("does not fit:")
        out += [f"  - {problem}" for problem in plan.problems]
        out.append(f"  the term that breaks it: {plan.breaking}")
        if plan.fixes:
            out.append("  settings that would fix it:")
            out += [f"    {fix}" for fix in plan.fixes]
        else:
            out.append("  no single or paired change of the usual settings fits: use more GPUs or a smaller model")
    return "\n".join(out)

