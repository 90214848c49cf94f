# glm-lightning: `make help` lists the targets.
PYTHON ?= python
# CPU wheel by default. This machine finds it on disk; elsewhere add the CPU index, e.g.
#   make install PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := .install.stamp
FAST := not slow and not gpu and not multi_gpu and not deepspeed
LINT_PATHS := glm tests bench recipes run.py
# mypy runs on the modules that type-check cleanly today; extend the list as modules get clean.
MYPY_PATHS := glm/errors.py glm/utils glm/model glm/data/sources.py glm/data/paths.py
export GLM_DATA_ROOT ?= data

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format bench smoke clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## install CPU torch, then the package with dev extras (skipped while pyproject.toml is unchanged)

demo: $(STAMP) ## install, pretrain a small GLM on the Gutenberg books on CPU, then finetune + evaluate it on COPA
	$(PYTHON) run.py +experiment=pretrain_tiny 'hydra.run.dir=$${paths.log_dir}/demo/pretrain'
	$(PYTHON) run.py +experiment=demo_copa

test: $(STAMP) ## install if needed, then the fast test suite (what CI runs)
	$(PYTHON) -m pytest -q -m "$(FAST)"

test-all: $(STAMP) ## every CPU test, the slow ones included
	$(PYTHON) -m pytest -q -m "not gpu and not multi_gpu and not deepspeed"

lint: $(STAMP) ## ruff (rules + format), the import contracts of pyproject.toml, mypy where clean
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
	$(PYTHON) -m mypy $(MYPY_PATHS)

format: $(STAMP) ## ruff: fix what it can, then format
	$(PYTHON) -m ruff check --fix $(LINT_PATHS)
	$(PYTHON) -m ruff format $(LINT_PATHS)

bench: $(STAMP) ## benchmarks (bench/); ratios on CPU, absolute numbers only on GPU
	@set -e; for f in bench/bench_*.py; do case $$f in *gpu*) continue;; esac; echo "== $$f"; $(PYTHON) $$f; done

smoke: $(STAMP) ## seconds-long end-to-end run (+experiment=ci_tiny, no logger)
	$(PYTHON) run.py +experiment=ci_tiny logger=none

clean: ## remove caches and run outputs (outputs/ holds the tokenizer/corpus caches too)
	rm -rf outputs multirun lightning_logs wandb .pytest_cache .ruff_cache $(STAMP)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
