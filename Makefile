# Two commands for a newcomer: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on the project's development and CI machines; elsewhere override it,
# e.g. make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" (see DEVELOPERS.md).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast test-gpu lint format docs bench-peers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev,onnx]'
	@touch $@

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash demo/run.sh

# One pytest-xdist worker per core, dealt one test at a time, the slow ones first
# (tests/conftest.py, which also gives each worker its share of the threads); `pytest` alone
# runs the same tests in one process.
PARALLEL := -n auto --dist load --maxschedchunk 1

test: setup
	$(BIN)/python -m pytest -q $(PARALLEL)

# tests/unit only: no model is trained (seconds). tests/training trains tiny models for a few
# updates, tests/learning to a stated accuracy, tests/cli and tests/e2e run the commands.
test-fast: setup
	$(BIN)/python -m pytest -q $(PARALLEL) tests/unit

# The CUDA tests (they skip without a GPU; S2S_GPU_TESTS_ON_CPU=1 checks them on the CPU).
test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu tests/gpu

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check s2s_cli tests benchmarks scripts recipes demo

docs: setup
	$(BIN)/python scripts/gen_docs.py

# s2s beside fairseq 0.12 (training) and OpenNMT-py 3.5 (translating) on this machine, in one run;
# the first run also builds their environments under benchmarks/out/peers/ (docs/benchmarks.md).
bench-peers: setup
	TORCH_SPEC="$(TORCH_SPEC)" $(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) demo/work .pytest_cache
