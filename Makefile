# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKPOINT ?=
OUT ?= out
DEMO_ARGS ?= --height 64 --width 96 --num-frames 17 --num-inference-steps 8 --seed 7

.PHONY: setup demo test lint constraints clean

$(STAMP): pyproject.toml constraints/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints/dev.txt -e '.[dev]'
	touch $@

setup: $(STAMP)

# The embedded default: a tiny random checkpoint built here, unless CHECKPOINT=/path/to/Wan2.1-T2V-1.3B-Diffusers.
demo: $(STAMP)
	@mkdir -p $(OUT)
	$(if $(CHECKPOINT),,[ -f $(OUT)/tiny-t2v/model_index.json ] || $(BIN)/wan-triton tiny-checkpoint --out $(OUT)/tiny-t2v)
	$(BIN)/wan-triton export --checkpoint $(or $(CHECKPOINT),$(OUT)/tiny-t2v) --repository $(OUT)/model_repository
	$(BIN)/wan-triton generate "a red cat walking in the snow" -o $(OUT)/demo.mp4 \
		--checkpoint $(or $(CHECKPOINT),$(OUT)/tiny-t2v) --onnx-repository $(OUT)/model_repository $(DEMO_ARGS)

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-pin after changing dependencies: resolve in a scratch venv and freeze it.
constraints:
	rm -rf /tmp/wan-triton-pin && $(PYTHON) -m venv /tmp/wan-triton-pin
	/tmp/wan-triton-pin/bin/pip install -q 'torch==2.13.0' 'numpy<2' -e '.[dev]'
	{ sed -n '1,3p' constraints/dev.txt; /tmp/wan-triton-pin/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints/new.txt
	mv constraints/new.txt constraints/dev.txt

clean:
	rm -rf $(VENV) $(OUT)
