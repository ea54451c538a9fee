"""Sampling K responses per prompt with transformers: plain `generate(num_return_sequences=K)` vs one shared
prompt prefill (`autoif_train.generation.shared_prefill`), measured side by side in one run.

Usage:
    python benchmarks/shared_prefill.py [--model smollm2-135m-instruct] [--prompts 16] [--samples 4]
        [--max-new-tokens 64] [--batch-size 8] [--repeats 2]

Both variants sample the same online-DPO training prompts (`verifiers/train_prompts.jsonl`, first N, through the
chat template, left-padded batches of `--batch-size` prompts) with `min_new_tokens = max_new_tokens`, so each does
exactly the same number of decode steps and the times compare like for like. The variants alternate (plain, shared,
plain, shared, ...) so slow drift in machine load hits both; the summary uses the median of the repeats. Prints the
seconds per variant and the plain / shared time ratio (> 1 means shared prefill is faster).
Not protected against: load spikes within one repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(model: str, prompts: int, samples: int, max_new_tokens: int, batch_size: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.generation.shared_prefill import generate_shared_prefill
    from autoif_train.models import resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [json.loads(x) for x in (REPO / "verifiers" / "train_prompts.jsonl").read_text().splitlines() if x.strip()]
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows[:prompts]]
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
              min_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)

    def run(shared: bool) -> float:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
                if shared:
                    generate_shared_prefill(lm, enc["input_ids"], enc["attention_mask"], samples, **kw)
                else:
                    lm.generate(**enc, num_return_sequences=samples, **kw)
        return time.perf_counter() - t0

    times = {"plain": [], "shared": []}
    for r in range(repeats):
        for name in ("plain", "shared"):
            times[name].append(run(name == "shared"))
            print(f"repeat {r} {name:<7}{times[name][-1]:8.1f} s", flush=True)
    plain, shared = statistics.median(times["plain"]), statistics.median(times["shared"])
    prompt_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)
    print(f"\nmodel={model} prompts={prompts} (mean {prompt_tokens:.0f} prompt tokens) K={samples} "
          f"new_tokens={max_new_tokens} batch={batch_size} threads={torch.get_num_threads()}")
    print(f"plain generate: {plain:.1f} s   shared prefill: {shared:.1f} s   plain / shared: {plain / shared:.2f}x")
    return plain / shared


def cli(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    return main(args.model, args.prompts, args.samples, args.max_new_tokens, args.batch_size, args.repeats)


if __name__ == "__main__":
    cli()
