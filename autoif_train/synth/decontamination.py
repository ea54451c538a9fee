"""Stage 8, decontamination: drop rows whose prompt or responses share a word 13-gram with an evaluation prompt.

Sources (`decontamination_sources`) are `datasets` ids (default `google/IFEval`, column `prompt`) or local JSONL
files with a `prompt` field. Text is lowercased and split into alphanumeric words before n-grams are taken.
Drops are reported per source (`ngram_overlap:<source>`). Not protected against: paraphrased leakage, or
overlap shorter than `ngram_size` words.
"""

from __future__ import annotations

import os
import re
from collections import Counter

from autoif_train.core.io import is_local, read_rows
from autoif_train.synth.artifacts import SynthError
from autoif_train.synth.stage import StageResult

NAME = "decontamination"


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def load_eval_prompts(source: str) -> list[str]:
    """The prompts of one evaluation source (local JSONL with `prompt`, or a datasets id)."""
    try:
        return [row["prompt"] for row in read_rows(source, fields={"prompt": object}, error=SynthError)]
    except SynthError as err:
        if is_local(source):
            raise
        raise SynthError(f"decontamination source {err}; give a local copy of its prompts or remove it from "
                         "decontamination_sources") from err


class Decontaminator:
    """Holds the n-grams of every source; `hit(text)` names the first source sharing an n-gram with `text`."""

    def __init__(self, sources: list[str], n: int = 13, required: bool = True):
        self.n = n
        self.sources: dict[str, set] = {}
        self.unavailable: list[str] = []
        for source in sources:
            try:
                prompts = load_eval_prompts(source)
            except SynthError as err:
                if required:
                    raise
                print(f"warning: {err}; skipping it (decontamination_required: false)")
                self.unavailable.append(source)
                continue
            self.sources[source] = set().union(*(ngrams(p, n) for p in prompts))

    def hit(self, *texts: str) -> str | None:
        grams = set().union(*(ngrams(t, self.n) for t in texts))
        for source, bank in self.sources.items():
            if grams & bank:
                return source
        return None


def get_decontaminator(ctx) -> Decontaminator:
    if getattr(ctx, "_decontaminator", None) is None:
        cfg = ctx.config
        ctx._decontaminator = Decontaminator(
            list(cfg.decontamination_sources), cfg.ngram_size, cfg.decontamination_required
        )
    return ctx._decontaminator


def process(ctx, rows: list[dict], chunk_index: int):
    deco = get_decontaminator(ctx)
    out, drops = [], Counter()
    for row in rows:
        source = deco.hit(row["prompt"], *(r["text"] for r in row["responses"]))
        if source:
            drops[f"ngram_overlap:{os.path.basename(source)}"] += 1
        else:
            out.append(row)
    details = Counter({f"source_unavailable:{s}": 1 for s in deco.unavailable} if chunk_index == 0 else {})
    return StageResult(out, drops, details)
