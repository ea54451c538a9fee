"""Every command, given each kind of bad input, exits 2 with one line naming the file, the line and the field.

Real `python -m autoif_train.cli` processes (no traceback may reach stderr). Kinds: a missing file, a malformed
line, a missing field, an unknown key, a value of the wrong type; plus the value checks done at parse time.
Run: flock /tmp/heavy.lock python -m pytest tests/test_bad_input.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SFT_ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
IFEVAL_ROW = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


def autoif(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "autoif_train.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"autoif {command}: error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def write_lines(path: Path, *lines) -> Path:
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


@pytest.fixture
def work(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a model folder that is never loaded
    return tmp_path


# ---------------------------------------------------------------- autoif train


def _train_recipe(work: Path, name: str, **keys) -> Path:
    base = {"stage": "sft", "model_name_or_path": str(work / "model"), "dataset_path": str(work / "d.jsonl"),
            "output_dir": str(work / "out")}
    path = work / name
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**base, **keys}.items()))
    return path


@pytest.mark.slow  # ~10 processes that import torch and TRL
def test_train_bad_inputs(work):
    recipe = _train_recipe(work, "r.yaml")
    done = autoif("train", recipe, cwd=work)  # data file missing
    assert_one_line_error(done, "train", f"{work / 'd.jsonl'}: file not found")

    write_lines(work / "d.jsonl", SFT_ROW, "", "{not json")
    assert_one_line_error(autoif("train", "--config", recipe, cwd=work), "train", "d.jsonl:3: not valid JSON")

    write_lines(work / "d.jsonl", SFT_ROW, "", {"prompt": "no messages"})
    assert_one_line_error(autoif("train", f"--config={recipe}", cwd=work), "train",
                          "d.jsonl:3: field 'messages': missing")

    typo = _train_recipe(work, "typo.yaml", learnin_rate=1e-5)
    assert_one_line_error(autoif("train", typo, cwd=work), "train",
                          "typo.yaml:5: field 'learnin_rate': unknown key (did you mean 'learning_rate'?)")

    wrong = _train_recipe(work, "wrong.yaml", learning_rate="abc")
    assert_one_line_error(autoif("train", wrong, cwd=work), "train",
                          "wrong.yaml:5: field 'learning_rate': expected float, got 'abc'")
    # a kebab-case flag fixes it from the command line; the run then fails at the (absent) model folder
    assert_one_line_error(autoif("train", wrong, "--learning-rate", "1e-5", "--model-name-or-path", "./no/such",
                                 cwd=work), "train", "model folder not found: ./no/such")

    assert_one_line_error(autoif("train", recipe, "--num_rounds", "0", "--stage", "online_dpo", cwd=work), "train",
                          "field 'num_rounds': must be >= 1")
    assert_one_line_error(autoif("train", recipe, "--stage", "online_dpo", "--isolation", "sekcomp", cwd=work),
                          "train", "field 'isolation': must be one of seccomp, bwrap, none")
    assert_one_line_error(autoif("train", "--config", cwd=work), "train", "--config needs one recipe file")


def test_sft_messages_rows_on_a_template_without_markers(work, plain_template_model_dir):
    """assistant_only_loss with `messages` rows cannot mask a template TRL cannot patch (SmolLM2's): one line
    naming the field and the fix, before any weights load (TRL's ValueError traceback before)."""
    write_lines(work / "d.jsonl", SFT_ROW)
    recipe = _train_recipe(work, "plain.yaml", model_name_or_path=str(plain_template_model_dir), max_steps=1)
    assert_one_line_error(autoif("train", recipe, cwd=work), "train", "field 'assistant_only_loss'",
                          "`prompt` + `completion`")


def test_train_help_is_short_and_grouped(work):
    done = autoif("train", "--help", cwd=work)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("usage: autoif train [--config] RECIPE.yaml") and len(lines) < 200
    text = done.stdout
    assert text.index("examples:") < text.index("online_dpo (") < text.index("sft (")
    assert "--num_rounds" in text and "--verifier_workers" in text and "--help-all" in text


# ---------------------------------------------------------------- autoif synth


def _synth_recipe(work: Path, name: str, **keys) -> Path:
    base = {"output_dir": str(work / "run"), "seed_instructions": str(work / "seeds.jsonl"),
            "query_source": str(work / "queries.jsonl"), "decontamination_sources": []}
    path = work / name
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**base, **keys}.items()))
    return path


@pytest.mark.slow
def test_synth_bad_inputs(work):
    recipe = _synth_recipe(work, "s.yaml")
    write_lines(work / "queries.jsonl", {"query": "How do I keep basil alive indoors in winter?"})
    done = autoif("synth", recipe, "--temperature", "0.7", cwd=work)  # an override is accepted; seeds missing
    assert_one_line_error(done, "synth", "s.yaml: field 'seed_instructions': file not found")
    assert not (work / "run").exists()  # checked before stage 1

    write_lines(work / "seeds.jsonl", {"instruction": "Answer in lowercase."}, "", "{not json")
    assert_one_line_error(autoif("synth", "--config", recipe, cwd=work), "synth", "seeds.jsonl:3: not valid JSON")

    write_lines(work / "seeds.jsonl", {"instruction": "Answer in lowercase."}, {"id": "x"})
    assert_one_line_error(autoif("synth", recipe, cwd=work), "synth", "seeds.jsonl:2: field 'instruction': missing")

    typo = _synth_recipe(work, "typo.yaml", verifier_sampels=3)
    assert_one_line_error(autoif("synth", typo, cwd=work), "synth",
                          "typo.yaml:5: field 'verifier_sampels': unknown key (did you mean 'verifier_samples'?)")

    wrong = _synth_recipe(work, "wrong.yaml", chunk_size="abc")
    assert_one_line_error(autoif("synth", wrong, cwd=work), "synth",
                          "wrong.yaml:5: field 'chunk_size': expected int, got 'abc'")
    assert_one_line_error(autoif("synth", recipe, "--verifier-workers", "-1", cwd=work), "synth",
                          "field 'verifier_workers': must be >= 0 (0 = auto)")


# ---------------------------------------------------------------- autoif verify


def test_verify_bad_inputs(work):
    v, r, out = work / "V.jsonl", work / "R.jsonl", work / "O.jsonl"
    write_lines(r, {"id": "a", "response": "hi", "verifiers": ["lower"]})
    args = ("verify", "--verifiers", v, "--responses", r, "--out", out)
    assert_one_line_error(autoif(*args, cwd=work), "verify", "V.jsonl: file not found")

    write_lines(v, {"id": "lower", "code": "def evaluate(response):\n    return response.islower()\n"}, "", "{x")
    assert_one_line_error(autoif(*args, cwd=work), "verify", "V.jsonl:3: not valid JSON")

    write_lines(v, {"id": "lower", "code": "def evaluate(response):\n    return response.islower()\n"})
    write_lines(r, {"id": "a", "response": "hi", "verifiers": ["lower"]}, "", {"id": "b", "verifiers": ["lower"]})
    assert_one_line_error(autoif(*args, cwd=work), "verify", "R.jsonl:3: field 'response': missing")

    write_lines(r, {"id": "a", "response": 5, "verifiers": ["lower"]})
    assert_one_line_error(autoif(*args, cwd=work), "verify", "R.jsonl:1: field 'response': must be str, got int")

    write_lines(r, {"id": "a", "response": "hi", "verifiers": ["lowr"]})
    assert_one_line_error(autoif(*args, cwd=work), "verify", "R.jsonl:1: field 'verifiers[0]': unknown verifier id")

    write_lines(r, {"id": "a", "response": "hi", "verifiers": ["lower"]})
    (work / "outdir").mkdir()
    done = autoif("verify", "--verifiers", v, "--responses", r, "--out", work / "outdir", cwd=work)
    assert_one_line_error(done, "verify", "outdir: field 'out': is a folder")
    done = autoif(*args, "--workers", "0", cwd=work)
    assert assert_one_line_error(done, "verify", "--workers: must be > 0") == done.stderr.strip()  # no usage dump


# ---------------------------------------------------------------- autoif bundle, autoif models, autoif plan


def test_bundle_bad_inputs(work):
    import shutil

    folder = work / "verifiers"
    assert_one_line_error(autoif("bundle", "--check", "--dir", folder, cwd=work), "bundle",
                          f"{folder / 'instructions.jsonl'}: file not found")
    shutil.copytree(REPO / "verifiers", folder)
    lines = (folder / "instructions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "category": ""})
    lines[2] = "{not json"
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n")
    done = autoif("bundle", "--check", "--dir", folder, cwd=work)
    line = assert_one_line_error(done, "bundle", "instructions.jsonl:3: not valid JSON",
                                 "instructions.jsonl:1: field 'category': must be a non-empty string")
    assert line == done.stderr.strip()
    done = subprocess.run([sys.executable, "-m", "autoif_train.bundle", "--dir", str(folder), "--workers", "0"],
                          cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_one_line_error(done, "bundle", "argument --workers: must be > 0")


def test_models_and_plan_bad_inputs(work):
    done = autoif("models", "prepare", "no-such-model", cwd=work)
    assert assert_one_line_error(done, "models", "invalid choice: 'no-such-model'") == done.stderr.strip()
    done = autoif("plan", work / "nope.yaml", "--debug", cwd=work)  # --debug: the traceback, then the one line
    assert done.returncode == 2 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"autoif plan: error: {work / 'nope.yaml'}: recipe file not found"


# ---------------------------------------------------------------- autoif eval


@pytest.mark.slow
def test_eval_bad_inputs(work):
    base = ("eval", "--model", work / "model", "--benchmarks", "ifeval", "--output_dir", work / "ev")
    assert_one_line_error(autoif(*base, "--data", work / "missing.jsonl", cwd=work), "eval",
                          "missing.jsonl: file not found")

    data = write_lines(work / "ifeval.jsonl", IFEVAL_ROW, "", "{x")
    assert_one_line_error(autoif(*base, "--data", data, cwd=work), "eval", "ifeval.jsonl:3: not valid JSON")

    write_lines(data, IFEVAL_ROW, {k: v for k, v in IFEVAL_ROW.items() if k != "kwargs"})
    assert_one_line_error(autoif(*base, "--data", data, cwd=work), "eval", "ifeval.jsonl:2: field 'kwargs': missing")

    recipe = work / "eval.yaml"
    recipe.write_text(f"model: {work / 'model'}\nbenchmark: ifeval\noutput_dir: {work / 'ev'}\n")
    assert_one_line_error(autoif("eval", "--config", recipe, cwd=work), "eval",
                          "eval.yaml:2: field 'benchmark': unknown key (did you mean 'benchmarks'?)")
    assert_one_line_error(autoif(*base, "--limit", "abc", cwd=work), "eval",
                          "field 'limit': expected int or null, got 'abc'")
    assert_one_line_error(autoif(*base, "--benchmarks", "ifevals", cwd=work), "eval", "unknown benchmark(s)")
    write_lines(data, IFEVAL_ROW)
    assert_one_line_error(autoif("eval", "--model", "./no/model", "--data", data, "--out", work / "ev", cwd=work),
                          "eval", "model folder not found: ./no/model")
    assert_one_line_error(autoif(*base, cwd=work), "eval", "google/IFEval: not a local file")  # hub, offline
    assert not (work / "ev").exists()


# ---------------------------------------------------------------- autoif quickstart and the dispatcher


@pytest.mark.slow
def test_quickstart_bad_inputs(work):
    out = ("--output_dir", work / "q", "--model", work / "model")
    assert_one_line_error(autoif("quickstart", *out, "--heldout", work / "missing.jsonl", cwd=work), "quickstart",
                          "missing.jsonl: file not found")
    assert_one_line_error(autoif("quickstart", *out, "--num_roundz", "1", cwd=work), "quickstart",
                          "field 'num_roundz': unknown key (did you mean 'num_rounds'?)")
    assert_one_line_error(autoif("quickstart", *out, "--num_rounds", "two", cwd=work), "quickstart",
                          "field 'num_rounds': expected int, got 'two'")
    assert_one_line_error(autoif("quickstart", "--out", work / "q", "--model", "./no/model", cwd=work),
                          "quickstart", "model folder not found: ./no/model")
    # the quickstart's own flags: one line, not argparse's usage dump
    assert_one_line_error(autoif("quickstart", *out, "--eval-batch-size", "abc", cwd=work), "quickstart",
                          "--eval-batch-size/--eval_batch_size: invalid int value: 'abc'")
    assert_one_line_error(autoif("quickstart", *out, "--benchmarks", "ifevals", cwd=work), "quickstart",
                          "unknown benchmark(s) ['ifevals']")


def test_autoif_without_a_command_exits_2(work):
    done = autoif(cwd=work)
    assert done.returncode == 2 and "usage: autoif <command>" in done.stderr


def test_ctrl_c_says_how_to_resume(work):
    import signal
    import time

    v = write_lines(work / "V.jsonl", {"id": "spin", "code": "def evaluate(response):\n    while True:\n        pass\n"})
    r = write_lines(work / "R.jsonl", *({"id": str(i), "response": "x", "verifiers": ["spin"]} for i in range(4)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "autoif_train.cli", "verify", "--verifiers", str(v), "--responses",
                             str(r), "--out", str(work / "O.jsonl"), "--timeout", "60", "--workers", "1",
                             "--no-progress"], cwd=work, env=env, stderr=subprocess.PIPE, text=True,
                            # as in a terminal: a suite run in the background (nohup, `cmd &`) ignores SIGINT, and
                            # the child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import psutil

    deadline = time.monotonic() + 60  # wait until scoring runs: a verifier process (a grandchild) spins on the CPU
    def spinning() -> bool:
        try:
            return any(k.ppid() != proc.pid and k.cpu_times().user > 0.3
                       for k in psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            return False

    while time.monotonic() < deadline and proc.poll() is None and not spinning():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "autoif verify: interrupted; rerun the same command to resume" in err and "Traceback" not in err
    assert not (work / "O.jsonl").exists()
