# latentdiff: the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs the project into it when missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision first and pinned: on the project machines they come from local disk.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow test-ui ui-screenshots lint clean default-model default-long inpaint-model

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

# The web app in a real browser: Debian's chromium + chromedriver (apt) and selenium (the ui-test extra),
# installed when missing; the tests never download anything.
CHROMIUM_PKGS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-ui: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(CHROMIUM_PKGS); }
	@$(VPY) -c "import selenium" 2>/dev/null || $(VPY) -m pip install -q -e '.[test,ui-test]'
	HF_HUB_OFFLINE=1 $(VPY) -m pytest -q tests/test_webapp.py tests/test_webapp_browser.py

# Screenshots of each panel for docs/webapp.md (MODEL: a model folder; default: the default model).
ui-screenshots: $(STAMP)
	HF_HUB_OFFLINE=1 $(VPY) scripts/webapp_screenshots.py $(if $(MODEL),--model $(MODEL)) --out docs/img

clean:
	rm -rf demo_out .pytest_cache

# Rebuild the shipped default model from its recipe (resumable: rerun after an interruption), then
# ship it in fp16 inside the package. CPU: see BENCHMARKS.md for how long each stage takes here.
default-model: $(STAMP)
	$(VENV)/bin/latentdiff train configs/default.yaml --resume
	rm -rf latentdiff/assets/default_model
	$(VENV)/bin/latentdiff export --model runs/default/model --format diffusers --dtype fp16 --out latentdiff/assets/default_model
	@echo "Shipped a new U-Net: its companions were trained on the old one and are gone with it. Retrain them:"
	@echo "  bash scripts/companions.sh runs/default/model layout segmap classifier (times in its header), then export"
	@echo "  runs/default/model again as above; make inpaint-model; then the quick evaluation (docs/gpu.md)."

# The default model's U-Net trained on past the shipped 2,000 steps (configs/default_long.yaml), a few hours
# at a time: Ctrl-C stops it with a checkpoint, and the next `make default-long` goes on. Needs runs/default.
# It does not ship anything: evaluate runs/default_long/model first (docs/training.md).
default-long: $(STAMP)
	[ -d runs/default_long ] || bash scripts/default_long.sh init
	bash scripts/default_long.sh train

# Fine-tune the inpainting model from the trained default model (runs/default/model, configs/inpaint.yaml;
# 21 min on 2 cores, measured 2026-11-29, resumable), then ship it in fp16 inside the package.
inpaint-model: $(STAMP)
	$(VENV)/bin/latentdiff train-inpaint configs/inpaint.yaml --resume
	rm -rf latentdiff/assets/inpaint_model
	$(VENV)/bin/latentdiff export --model runs/inpaint/model --format diffusers --dtype fp16 --out latentdiff/assets/inpaint_model
	rm -rf latentdiff/assets/inpaint_model/clip   # the CLIP towers ship once, with the default model
