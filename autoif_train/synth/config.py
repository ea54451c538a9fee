"""`SynthConfig`: every knob of the AutoIF synthesis pipeline; recipe YAML keys are these field names.

Defaults are the paper's values (see each field's help); recipes lower the K's for small runs. Unknown keys are
errors naming the file and the key. Relative paths are taken from the working directory, else from the recipe's
folder, else from the shipped files (`recipes/...`, `verifiers/...`), as `autoif train` resolves them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autoif_train.core.errors import RecipeError
from autoif_train.core.io import is_local
from autoif_train.core.recipes import Recipe, read_recipe, resolve
from autoif_train.data.pairs import PairRuleFields
from autoif_train.resources import resolve_shipped
from autoif_train.sandbox.settings import SandboxArgs

NLI_FILTERS = ("nli", "llm_judge", "none")
BACKENDS = ("transformers", "openai", "vllm")
PATH_FIELDS = ("seed_instructions", "query_source")


@dataclass
class SynthConfig(PairRuleFields, SandboxArgs):
    """Settings of `autoif synth` (YAML keys = field names; the export's pair rule is `PairRuleFields`, the sandbox
    keys are `SandboxArgs`)."""

    output_dir: str = field(default="runs/synth", metadata={"help": "Run folder (artifacts, manifest, report)."})
    seed_instructions: str = field(
        default="recipes/synth/seed_instructions.jsonl",
        metadata={"help": "JSONL of seed instructions {id, instruction[, verifiers, cases]}."},
    )
    # generation
    backend: str = field(default="transformers", metadata={"help": "transformers | openai | vllm."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Supervision model (path, id, name)."})
    backend_kwargs: dict = field(default_factory=dict, metadata={"help": "Extra backend constructor arguments."})
    seed: int = field(default=0, metadata={"help": "Base seed for sampling and query pairing."})
    chunk_size: int = field(default=256, metadata={"help": "Rows per resumable chunk (one batched call each)."})
    # 1. instruction augmentation
    instruction_rewrites: int = field(default=100, metadata={"help": "K: self-instruct answers per seed."})
    instruction_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    instruction_max_tokens: int = field(default=512, metadata={"help": "Tokens per self-instruct answer."})
    instruction_min_chars: int = field(default=10, metadata={"help": "Shorter instructions are dropped."})
    instruction_max_chars: int = field(default=300, metadata={"help": "Longer instructions are dropped."})
    # 2. verifier generation
    verifier_samples: int = field(default=5, metadata={"help": "K: verifier+cases answers per instruction."})
    verifier_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    verifier_max_tokens: int = field(default=1024, metadata={"help": "Tokens per verifier answer."})
    # 3. cross-validation
    min_case_agreement: float = field(default=0.5, metadata={"help": "A case needs > this share of functions."})
    min_function_accuracy: float = field(default=0.5, metadata={"help": "A function needs > this case accuracy."})
    min_functions: int = field(default=1, metadata={"help": "Instruction needs >= this many functions (code: 3)."})
    min_cases: int = field(default=1, metadata={"help": "Instruction needs >= this many cases (code: 10)."})
    # 4. back-translation + NLI
    back_translations: int = field(default=3, metadata={"help": "Functions back-translated per instruction."})
    back_translation_max_tokens: int = field(default=128, metadata={"help": "Tokens per back-translation."})
    nli_filter: str = field(default="nli", metadata={"help": "nli (classifier) | llm_judge | none."})
    nli_model: str = field(
        default="MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7",
        metadata={"help": "Sequence-classification NLI model (labels entailment/neutral/contradiction)."},
    )
    nli_batch_size: int = field(default=16, metadata={"help": "Premise/hypothesis pairs per NLI batch."})
    # 5. queries
    query_source: str | None = field(default=None, metadata={"help": "Local JSONL/JSON (ShareGPT ok) or dataset id."})
    query_split: str = field(default="train", metadata={"help": "Split when query_source is a dataset id."})
    query_field: str | None = field(default=None, metadata={"help": "Column holding the query (auto if unset)."})
    query_min_chars: int = field(default=20, metadata={"help": "Shorter queries are dropped (paper: 20)."})
    query_max_chars: int = field(default=300, metadata={"help": "Longer queries are dropped (paper: 300)."})
    max_query_rows: int | None = field(default=None, metadata={"help": "Read at most this many source rows."})
    queries_per_instruction: int = field(default=16, metadata={"help": "K: queries paired with each instruction."})
    exclude_queries: list = field(
        default_factory=list, metadata={"help": "JSONL files of held-out rows (field query_id) never used here."}
    )
    # 6. responses
    responses_per_query: int = field(default=8, metadata={"help": "K: responses sampled per query."})
    response_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    response_max_tokens: int = field(default=512, metadata={"help": "Tokens per response."})
    min_pass_rate: float = field(default=0.5, metadata={"help": "SFT keeps pass rate > this (paper 0.5; code 0)."})
    # 7. quality
    quality_filter: bool = field(default=True, metadata={"help": "Score responses with an LLM judge."})
    quality_threshold: float = field(default=8.0, metadata={"help": "Keep judge score >= this (0..10)."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (0 = greedy)."})
    judge_max_tokens: int = field(default=256, metadata={"help": "Tokens per judge answer."})
    # 8. decontamination
    decontamination_sources: list = field(
        default_factory=lambda: ["google/IFEval"], metadata={"help": "Eval prompt sources: dataset ids or JSONL."}
    )
    decontamination_required: bool = field(
        default=True, metadata={"help": "False: skip an unloadable source (reported) instead of failing."}
    )
    ngram_size: int = field(default=13, metadata={"help": "Word n-gram length for the overlap check."})
    # 9. export
    # (the pair rule's keys: `data.pairs.PairRuleFields`, the block online DPO reads too)
    sft_responses_per_query: int = field(default=1, metadata={"help": "Best responses kept per query for SFT."})

    def __post_init__(self):
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.nli_filter not in NLI_FILTERS:
            problems.append(f"nli_filter must be one of {NLI_FILTERS}, got {self.nli_filter!r}")
        for name in ("chunk_size", "instruction_rewrites", "verifier_samples", "queries_per_instruction",
                     "responses_per_query", "ngram_size", "nli_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_case_agreement", "min_function_accuracy", "min_pass_rate", "chosen_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        try:
            self.pair_rule()
        except ValueError as err:
            problems.append(str(err))
        if not isinstance(self.backend_kwargs, dict):
            problems.append("backend_kwargs must be a mapping")
        if isinstance(self.decontamination_sources, str):
            self.decontamination_sources = [self.decontamination_sources]
        if problems:
            raise RecipeError("; ".join(problems))
        self.check_sandbox()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_path(value: str | None, recipe_dir: str) -> str | None:
    if not value or os.path.isabs(value) or os.path.exists(value):
        return value
    candidate = os.path.join(recipe_dir, value)
    return candidate if os.path.exists(candidate) else resolve_shipped(value)  # `recipes/...`, as `train` does


def load_synth_config(path: str | None = None, overrides: dict[str, Any] | None = None,
                      recipe: Recipe | None = None) -> SynthConfig:
    """Read a recipe YAML (optional) and apply `overrides` (values, or strings from the command line in
    `recipe.overrides`); unknown keys and wrong types raise `RecipeError` naming the file, line and key."""
    recipe = recipe or (read_recipe(path) if path else Recipe())
    values = resolve(recipe, [SynthConfig])
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides:
        values.update(resolve(Recipe(values=overrides), [SynthConfig]))
    recipe_dir = os.path.dirname(os.path.abspath(recipe.path)) if recipe.path else os.getcwd()
    for name in PATH_FIELDS:
        if name in values:
            values[name] = _resolve_path(values[name], recipe_dir)
    if isinstance(values.get("exclude_queries"), list):
        values["exclude_queries"] = [_resolve_path(s, recipe_dir) for s in values["exclude_queries"]]
    if isinstance(values.get("decontamination_sources"), list):
        values["decontamination_sources"] = [
            _resolve_path(s, recipe_dir) if str(s).endswith((".jsonl", ".json")) else s
            for s in values["decontamination_sources"]
        ]
    try:
        return SynthConfig(**values)
    except RecipeError as err:
        raise RecipeError(recipe.path or "command line", None, err.field, err.message) from err


def input_paths(config: SynthConfig) -> list[tuple[str, str]]:
    """(key, path) of every local input file the recipe names, for `check_inputs`."""
    paths = [("seed_instructions", config.seed_instructions)]
    if config.query_source and is_local(config.query_source):
        paths.append(("query_source", config.query_source))
    paths += [("exclude_queries", p) for p in config.exclude_queries]
    if config.decontamination_required:  # otherwise a missing source is skipped by the stage, with a note
        paths += [("decontamination_sources", s) for s in config.decontamination_sources if is_local(s)]
    return paths


def check_inputs(config: SynthConfig, recipe_path: str | None = None) -> None:
    """Raise `RecipeError` for a missing input (unset `query_source`, a file that does not exist) before stage 1."""
    where = recipe_path or "command line"
    if not config.query_source:
        raise RecipeError(where, None, "query_source", "not set: give a local JSONL/JSON file or a datasets id")
    for key, path in input_paths(config):
        if not os.path.exists(os.path.expanduser(path)):
            raise RecipeError(where, None, key, f"file not found: {path}")


FIELD_NAMES = tuple(f.name for f in fields(SynthConfig))
