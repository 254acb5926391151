# latentdiff: the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs the project into it when missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision first and pinned: on the project machines they come from local disk.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow lint clean default-model inpaint-model

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentdiff demo --out demo_out

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VPY) -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(VPY) -m pytest -q -m slow

clean:
	rm -rf demo_out .pytest_cache

# Rebuild the shipped default model from its recipe (resumable: rerun after an interruption), then
# ship it in fp16 inside the package. CPU: see BENCHMARKS.md for how long each stage takes here.
default-model: $(STAMP)
	$(VENV)/bin/latentdiff train configs/default.yaml --resume
	rm -rf latentdiff/assets/default_model
	$(VENV)/bin/latentdiff export --model runs/default/model --format diffusers --dtype fp16 --out latentdiff/assets/default_model

# Fine-tune the inpainting model from the trained default model (runs/default/model, configs/inpaint.yaml;
# ≈ 30 min on 2 cores, resumable), then ship it in fp16 inside the package.
inpaint-model: $(STAMP)
	$(VENV)/bin/latentdiff train-inpaint configs/inpaint.yaml --resume
	rm -rf latentdiff/assets/inpaint_model
	$(VENV)/bin/latentdiff export --model runs/inpaint/model --format diffusers --dtype fp16 --out latentdiff/assets/inpaint_model
