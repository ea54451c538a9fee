"""AutoIF's SFT warm start before online DPO (`autoif quickstart --sft-warm-start`): rejection-sampled SFT data
from the model itself (self-alignment), then TRL's `SFTTrainer` through the one trainer entry point.

`verified_sft_rows`: K sampled responses per training prompt, scored by the one scoring path
(`rewards.VerifierCodeReward` in the sandboxed pool); a prompt gives one SFT row, its first response that ended its
turn (not cut at max_new_tokens) and passed every verifier (pass rate 1.0). `warm_start` writes those rows to
`OUT/sft.jsonl`, trains `recipes/quickstart/sft.yaml` on them into `OUT`, and writes `OUT/warm_start.json` last, so
a rerun with the file present reuses the SFT model. The prompts are the last `num_prompts` rows of the training
file, so they do not overlap the first rows the online-DPO rounds take (checked). Not protected against: verifiers
that pass bad responses; the SFT data then teaches what they let through.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from autoif_train.core.errors import InputError
from autoif_train.core.io import read_json, write_json, write_jsonl
from autoif_train.resources import bundled

DEFAULT_SFT_RECIPE = bundled("recipes/quickstart/sft.yaml")
logger = logging.getLogger(__name__)


def verified_sft_rows(model_path: str, rows, pool, num_samples: int, max_new_tokens: int, temperature: float,
                      top_k: int, batch_size: int, seed: int) -> tuple[list[dict], dict]:
    """(SFT rows `{"id", "prompt": messages, "completion": [assistant]}`, stats) from `num_samples` samples per
    prompt row. Prompt/completion rows give TRL's completion-only loss, which needs no generation markers in the
    chat template (SmolLM2's has none)."""
    from autoif_train.generation import GenerationConfig
    from autoif_train.generation.transformers_backend import TransformersGenerator
    from autoif_train.rewards import VerifierCodeReward

    generator = TransformersGenerator(model_path, batch_size=batch_size, progress=True)
    try:
        config = GenerationConfig(n=num_samples, temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens,
                                  seed=seed)
        completions = generator.complete([r.messages for r in rows], config)
    finally:
        generator.close()
    flat_rows = [row for row in rows for _ in range(num_samples)]
    flat = [c for per_prompt in completions for c in per_prompt]
    rates = VerifierCodeReward(pool).score(flat_rows, [c.text for c in flat]).rates(0.0)
    sft, passed, truncated = [], 0, 0
    for i, row in enumerate(rows):
        samples = list(zip(flat[i * num_samples:(i + 1) * num_samples], rates[i * num_samples:(i + 1) * num_samples]))
        truncated += sum(c.truncated for c, _ in samples)
        good = [c for c, rate in samples if rate == 1.0 and not c.truncated]
        passed += sum(rate == 1.0 for _, rate in samples)
        if good:
            sft.append({"id": row.id, "prompt": row.messages,
                        "completion": [{"role": "assistant", "content": good[0].text}]})
    stats = {"prompts": len(rows), "samples": len(flat), "samples_passing": passed, "samples_truncated": truncated,
             "sft_rows": len(sft)}
    return sft, stats


def warm_start(model_path: str, script_args, training_args, pool, out_dir: Path, num_prompts: int,
               recipe: str | Path = DEFAULT_SFT_RECIPE) -> tuple[str, dict]:
    """SFT `model_path` on its own verified responses to the training prompts; returns (SFT model folder, stats).
    Reuses a finished warm start in `out_dir` (its `warm_start.json` is written last)."""
    from autoif_train.configs import parse_train_args
    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.train import main as train_main

    out_dir = Path(out_dir)
    done = out_dir / "warm_start.json"
    if done.is_file():
        logger.info("SFT warm start: reusing %s", out_dir)
        return str(out_dir), read_json(done)
    rows = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle)
    used = training_args.num_rounds * training_args.prompts_per_round
    if num_prompts < 1 or used + num_prompts > len(rows):
        raise InputError(script_args.dataset_path, None, "sft_warm_start_prompts",
                         f"{num_prompts} warm-start prompts and the rounds' {used} need more than the file's "
                         f"{len(rows)} rows")
    t0 = time.time()
    sft_rows, stats = verified_sft_rows(
        model_path, rows[-num_prompts:], pool, training_args.num_samples, training_args.max_new_tokens,
        training_args.temperature, training_args.top_k, training_args.generation_batch_size * 2, training_args.seed)
    logger.info("SFT warm start: %d verified responses from %d prompts", stats["sft_rows"], stats["prompts"])
    if not sft_rows:
        raise InputError(script_args.dataset_path, None, None, "SFT warm start: no sampled response passed its "
                                                               "verifiers; nothing to train on")
    write_jsonl(out_dir / "sft.jsonl", sft_rows)
    stats["sampling_seconds"] = time.time() - t0
    t0 = time.time()
    sft_args = parse_train_args(["--config", str(recipe), "--model_name_or_path", model_path,
                                 "--output_dir", str(out_dir), "--dataset_path", str(out_dir / "sft.jsonl"),
                                 "--seed", str(training_args.seed)])
    result = train_main(*sft_args)
    stats.update(training_seconds=time.time() - t0, train_loss=result.metrics.get("train_loss"))
    write_json(done, stats)
    return result.output_dir, stats
