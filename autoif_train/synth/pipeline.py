"""Runs the synthesis stages in order over a run folder: chunked, resumable, with per-stage counts.

Each stage module defines `NAME`, `process(ctx, rows, chunk_index) -> StageResult` (one batched call per chunk),
and optionally `inputs(ctx)` (default: the previous stage's rows) and `finalize(ctx, rows) -> StageResult`
(cross-chunk work such as dedupe or export). The runner feeds chunks of `chunk_size` rows, stores each finished
chunk atomically, skips finished chunks and stages on a re-run, and records rows in/out and drops by reason.
Invariant checked by the tests: `candidates - sum(drops) == rows_out` for every stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

from tqdm.auto import tqdm

from autoif_train.generation import GenerationConfig, Generator, build_generator
from autoif_train.synth import (
    back_translation,
    cross_validation,
    decontamination,
    export,
    instructions,
    quality,
    queries,
    responses,
    verifier_generation,
)
from autoif_train.synth.artifacts import RunFolder, SynthError
from autoif_train.synth.config import SynthConfig
from autoif_train.synth.stage import StageResult  # noqa: F401 - re-exported for stage modules

STAGE_MODULES = [
    instructions, verifier_generation, cross_validation, back_translation, queries, responses, quality,
    decontamination, export,
]
STAGES = [m.NAME for m in STAGE_MODULES]


class SynthContext:
    """What stages share: the config, the run folder, one generator and one verifier pool (both lazy)."""

    def __init__(self, config: SynthConfig, run: RunFolder, generator: Generator | None = None):
        self.config = config
        self.run = run
        self._generator = generator
        self._owns_generator = generator is None
        self._pool = None

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = build_generator(self.config.backend, self.config.model, **self.config.backend_kwargs)
        return self._generator

    @property
    def pool(self):
        if self._pool is None:
            self._pool = self.config.pool()  # SandboxArgs: sized to the host when verifier_workers is 0
        return self._pool

    def gen_config(self, stage: str, chunk_index: int, **kwargs) -> GenerationConfig:
        """Sampling settings seeded by (run seed, stage, chunk) so a resumed chunk samples what a clean run would."""
        seed = self.config.seed + 100_000 * STAGES.index(stage) + chunk_index
        return GenerationConfig(seed=seed, **kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._generator is not None and self._owns_generator:
            self._generator.close()
            self._generator = None


def _run_stage(ctx: SynthContext, module, previous: str | None) -> dict:
    run, name, size = ctx.run, module.NAME, ctx.config.chunk_size
    start = time.time()
    rows_in = module.inputs(ctx) if hasattr(module, "inputs") else run.read_stage(previous)
    info = run.stage_info(name)
    digest = hashlib.sha1(json.dumps(rows_in, sort_keys=True).encode()).hexdigest()
    if run.parts_dir(name).exists():
        for key, now in (("chunk_size", size), ("inputs_sha1", digest)):
            if info.get(key) not in (None, now):
                raise SynthError(
                    f"stage {name!r}: {key} changed since its first chunks were written in {run.root}; restore it "
                    f"or rerun with --from-stage {name}"
                )
    n_chunks = (len(rows_in) + size - 1) // size
    info.update(status="running", chunk_size=size, inputs_sha1=digest, chunks_total=n_chunks)
    run.save()
    kept: list[dict] = []
    drops, details, candidates = Counter(), Counter(), 0
    for index in tqdm(range(n_chunks), desc=name, unit="chunk", disable=n_chunks < 2):
        meta = run.chunk_done(name, index)
        if meta is None:
            result = module.process(ctx, rows_in[index * size : (index + 1) * size], index)
            meta = {"drops": dict(result.drops), "details": dict(result.details), "candidates": result.candidates}
            run.write_chunk(name, index, result.rows, meta)
            chunk_rows = result.rows
        else:
            chunk_rows = run.read_chunk(name, index)
        kept.extend(chunk_rows)
        drops.update(meta["drops"])
        details.update(meta["details"])
        candidates += meta["candidates"]
    if hasattr(module, "finalize"):
        final = module.finalize(ctx, kept)
        kept = final.rows
        drops.update(final.drops)
        details.update(final.details)
        candidates += final.candidates - len(final.rows) - sum(final.drops.values())  # extra candidates, if any
    stats = {
        "rows_in": len(rows_in), "candidates": candidates, "drops": dict(drops), "details": dict(details),
        "seconds": round(time.time() - start, 2),
    }
    run.finish_stage(name, kept, stats)
    return run.manifest["stages"][name]


def run_pipeline(
    config: SynthConfig, from_stage: str | None = None, generator: Generator | None = None, until: str | None = None
) -> dict:
    """Run (or resume) every stage into `config.output_dir`; returns the report (also written to report.json)."""
    from autoif_train.synth.report import write_report

    for option, value in (("--from-stage", from_stage), ("until", until)):
        if value is not None and value not in STAGES:
            raise SynthError(f"{option}: unknown stage {value!r}; stages are {', '.join(STAGES)}")
    run = RunFolder(config.output_dir)
    changed = sorted(k for k, v in (run.manifest.get("config") or {}).items() if config.to_dict().get(k) != v)
    if changed and from_stage is None:
        print(f"note: config changed since the last run ({', '.join(changed)}); finished stages are kept, "
              "use --from-stage to redo them")
    run.manifest["config"] = config.to_dict()
    run.save()
    if from_stage is not None:
        for name in STAGES[STAGES.index(from_stage) :]:
            run.reset(name)
        for name in export.FILES:  # stale deliverables must not outlive the stages they came from
            (run.root / name).unlink(missing_ok=True)
    ctx = SynthContext(config, run, generator)
    try:
        previous = None
        for module in STAGE_MODULES:
            if not run.is_done(module.NAME):
                _run_stage(ctx, module, previous)
            previous = module.NAME
            if module.NAME == until:
                break
    finally:
        ctx.close()
        report = write_report(run)
    return report
