# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKPOINT ?=
OUT ?= out
DEMO_PROMPT ?= a red circle moving right on a blue background
DEMO_ARGS ?= --height 64 --width 64 --num-frames 17 --num-inference-steps 20 --seed 7
DEMO_GRPC_PORT ?= 18001
DEMO_HTTP_PORT ?= 18000
DEMO_METRICS_PORT ?= 18002

DEMO_API_PORT ?= 8080

.PHONY: setup demo playground test test-gpu lint bench constraints clean

$(STAMP): pyproject.toml constraints/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints/dev.txt -e '.[dev]'
	# DiffSynth-Studio, the S2V parity reference (tests/test_s2v.py), without its declared dependencies:
	# torchvision would replace torch, and the model modules the tests import need none of them.
	$(BIN)/pip install -q --no-deps -c constraints/dev.txt diffsynth
	touch $@

setup: $(STAMP)

# Serve the embedded default (the small checkpoint trained on captioned shapes, wan_triton/checkpoints/trained/)
# or CHECKPOINT=/path/to/a/real Wan2.1-T2V-1.3B-Diffusers folder (then set DEMO_PROMPT and DEMO_ARGS to
# suit it), generate one video over gRPC, write the MP4 and its contact sheet, stop.
demo: $(STAMP)
	@set -e; \
	$(BIN)/wan-triton serve $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) --repository $(OUT)/model_repository \
		--grpc-port $(DEMO_GRPC_PORT) --http-port $(DEMO_HTTP_PORT) --metrics-port $(DEMO_METRICS_PORT) \
		--log $(OUT)/triton.log & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' EXIT; \
	$(BIN)/wan-triton generate "$(DEMO_PROMPT)" -o $(OUT)/demo.mp4 --contact-sheet $(OUT)/demo.png \
		--url 127.0.0.1:$(DEMO_GRPC_PORT) --wait 900 $(DEMO_ARGS)

# The embedded default (or CHECKPOINT) served with the OpenAI Videos API and the playground page on
# http://127.0.0.1:$(DEMO_API_PORT)/ until Ctrl-C.
playground: $(STAMP)
	$(BIN)/wan-triton serve $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) --repository $(OUT)/model_repository \
		--grpc-port $(DEMO_GRPC_PORT) --http-port $(DEMO_HTTP_PORT) --metrics-port $(DEMO_METRICS_PORT) \
		--api-port $(DEMO_API_PORT) --api-data-dir $(OUT)/api --log $(OUT)/triton.log

test: $(STAMP) lint
	$(BIN)/pytest -q --durations=40

# The first GPU run, in one command (< 8 min on one H200-class GPU): the GPU tests (tests/test_gpu.py), then
# the GPU check; one report, $(OUT)/gpu-report.json, and the check's JSON in $(OUT)/gpu-check/.
test-gpu: $(STAMP)
	WAN_TRITON_GPU_REPORT=$(OUT)/gpu-report.json $(BIN)/pytest -q -rs -m gpu tests/test_gpu.py
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --out $(OUT)/gpu-check

lint: $(STAMP)
	$(BIN)/ruff check .

# Every benchmark on the bench-size checkpoint (built and exported once, cached): results in
# benchmarks/results/latest.json, rendered into docs/PERFORMANCE.md and its plots.
bench: $(STAMP)
	$(BIN)/wan-triton bench $(BENCH_ARGS)

# Re-pin after changing dependencies: resolve in a scratch venv and freeze it.
constraints:
	rm -rf /tmp/wan-triton-pin && $(PYTHON) -m venv /tmp/wan-triton-pin
	/tmp/wan-triton-pin/bin/pip install -q 'torch==2.13.0' 'numpy<2' -e '.[dev]'
	{ sed -n '1,3p' constraints/dev.txt; /tmp/wan-triton-pin/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints/new.txt
	mv constraints/new.txt constraints/dev.txt

clean:
	rm -rf $(VENV) $(OUT)
