"""Stage 4, back-translation + NLI filter: the model restates the instruction each kept function checks (up to
`back_translations` functions), then each (original = premise, back-translation = hypothesis) pair is judged;
an instruction with any "contradiction" is dropped.

Judges (`nli_filter`): `nli` = a transformers sequence-classification model (default the multilingual mDeBERTa
XNLI model of the paper) run in this process; `llm_judge` = the supervision model answers "Label: ..." (for when
no NLI model is available); `none` = keep everything (ablation). Empty back-translations are skipped (counted in
details), and unparseable judge answers count as "unknown", not as contradictions.
"""

from __future__ import annotations

from collections import Counter

from autoif_train.synth import prompts
from autoif_train.synth.parsing import parse_nli_label
from autoif_train.synth.stage import StageResult

NAME = "back_translation"


class NLIClassifier:
    """A sequence-classification NLI model; `labels(pairs)` -> entailment | neutral | contradiction per pair."""

    def __init__(self, model: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).eval()
        self.batch_size = batch_size
        names = {int(i): str(lab).lower() for i, lab in self.model.config.id2label.items()}
        self.id2label = {}
        for i, lab in names.items():
            for canonical in ("entailment", "neutral", "contradiction"):
                if lab.startswith(canonical[:7]):
                    self.id2label[i] = canonical
        if "contradiction" not in self.id2label.values():
            raise ValueError(f"NLI model {model!r} has no contradiction label (id2label={names})")

    def labels(self, pairs: list[tuple[str, str]]) -> list[str]:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(pairs), self.batch_size):
                batch = pairs[i : i + self.batch_size]
                enc = self.tokenizer(
                    [p for p, _ in batch], [h for _, h in batch], padding=True, truncation=True, max_length=512,
                    return_tensors="pt",
                )
                pred = self.model(**enc).logits.argmax(-1).tolist()
                out.extend(self.id2label.get(int(k), "unknown") for k in pred)
        return out


def _judge_with_llm(ctx, pairs, chunk_index) -> list[str]:
    answers = ctx.generator.generate(
        [prompts.NLI_JUDGE.format(premise=p, hypothesis=h) for p, h in pairs],
        ctx.gen_config(NAME, 50_000 + chunk_index, n=1, temperature=ctx.config.judge_temperature,
                       max_new_tokens=ctx.config.judge_max_tokens),
    )
    return [parse_nli_label(a[0]) or "unknown" for a in answers]


def _classifier(ctx) -> NLIClassifier:
    if getattr(ctx, "_nli", None) is None:
        ctx._nli = NLIClassifier(ctx.config.nli_model, ctx.config.nli_batch_size)
    return ctx._nli


def process(ctx, rows: list[dict], chunk_index: int):
    cfg = ctx.config
    jobs = [(r, code) for r, row in enumerate(rows) for code in row["functions"][: cfg.back_translations]]
    answers = ctx.generator.generate(
        [prompts.BACK_TRANSLATION.format(code=code) for _, code in jobs],
        ctx.gen_config(NAME, chunk_index, n=1, temperature=0.0, max_new_tokens=cfg.back_translation_max_tokens),
    ) if jobs else []
    details = Counter()
    texts: list[list[str]] = [[] for _ in rows]
    for (r, _), samples in zip(jobs, answers):
        text = samples[0].strip()
        if text:
            texts[r].append(text)
        else:
            details["empty_back_translation"] += 1
    pairs = [(r, rows[r]["instruction"], t) for r in range(len(rows)) for t in texts[r]]
    if cfg.nli_filter == "none" or not pairs:
        labels = ["unchecked"] * len(pairs)
    elif cfg.nli_filter == "nli":
        labels = _classifier(ctx).labels([(p, h) for _, p, h in pairs])
    else:
        labels = _judge_with_llm(ctx, [(p, h) for _, p, h in pairs], chunk_index)
    per_row: list[list[str]] = [[] for _ in rows]
    for (r, _, _), label in zip(pairs, labels):
        per_row[r].append(label)
        details[f"label:{label}"] += 1
    out, drops = [], Counter()
    for row, back, labs in zip(rows, texts, per_row):
        if "contradiction" in labs:
            drops["nli_contradiction"] += 1
            continue
        out.append({**row, "back_translations": back, "nli_labels": labs})
    return StageResult(out, drops, details)
