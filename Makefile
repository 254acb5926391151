# latentdiff: the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs the project into it when missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision first and pinned: on the project machines they come from local disk.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint test-slow test-ui ui-screenshots clean default-model default-long inpaint-model \
        default-model-v2 default-model-v1

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentdiff demo --out demo_out

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(VPY) -m pytest -q

# ruff with the rules and line length of pyproject.toml, and import-linter's contracts there (no import
# cycles; inference never imports training, evaluation or the interfaces): part of `make test`, so CI runs them
lint: $(STAMP)
	$(VPY) -m ruff check
	$(VENV)/bin/lint-imports

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

# Rebuild the shipped default model from its recipe (issue #27), then ship it in fp16 inside the package.
# Resumable: rerun after an interruption and each step goes on where it stopped (finished steps return at
# once). configs/default_v2.yaml trains the f = 2 VAE, the CLIP towers and the U-Net with its text encoder to
# step 8,000; configs/default_v2_long.yaml goes on to step 12,000; the relation phase configs/default_v2_rel.yaml
# (captions from scripts/relation_captions.py) to step 14,000; then the companions are trained against that
# U-Net and installed, and scripts/ship_default.sh exports the model in fp16 to latentdiff/assets/default_model.
# CPU, 2 cores, AMX Xeon with torch.compile (2026-12-08, docs/training.md): VAE 11 min, CLIP 2 min, U-Net
# 91 + 51 + 24 min, companions about 2 h (layout ControlNet 1 h, classifier 10 min, map 3 min, GLIGEN 3 min).
default-model: default-model-v2
	bash scripts/ship_default.sh runs/default_v2_rel/model
	@echo "Shipped. Check: make test, python tests/behaviour_hashes.py --record, the quick evaluation (docs/eval.md)."

# The first default model (shipped until 2026-12-08; the inpainting model is still fine-tuned from its U-Net,
# see inpaint-model): configs/default.yaml (VAE, CLIP, U-Net to step 2,000), configs/default_long.yaml (U-Net
# on to step 6,000), its companions. Ships nothing. CPU, 2 cores: about 2 h + 3 h 40 min + 40 min.
default-model-v1: $(STAMP)
	$(VENV)/bin/latentdiff train configs/default.yaml --resume
	$(MAKE) default-long
	bash scripts/companions.sh runs/default_long/model layout segmap classifier

# Only the U-Net's long run (step 2,000 -> 6,000), a few hours at a time: Ctrl-C stops it with a
# checkpoint, and the next `make default-long` goes on. Needs runs/default. Ships nothing.
default-long: $(STAMP)
	[ -d runs/default_long ] || bash scripts/default_long.sh init
	bash scripts/default_long.sh train

# The default model's training without the shipping (`make default-model` runs this, then ships): configs/
# default_v2.yaml from scratch (f = 2 VAE, CLIP, then the U-Net with its text encoder to step 8,000),
# default_v2_long.yaml on to step 12,000, the relation phase default_v2_rel.yaml (captions from scripts/
# relation_captions.py) to step 14,000, then its companions. Resumable: each step goes on where it stopped.
# CPU, 2 cores (AMD EPYC, 2026-12-07): VAE 17 min, CLIP 2 min, U-Net 2 h 35 min + 1 h 41 min + 35 min; on the
# AMX Xeon with torch.compile (2026-12-08, docs/training.md): 11 min, 2 min, U-Net 91 + 51 + 24 min.
V2 := SRC=runs/default_v2 DST=runs/default_v2_long STEP=8000 CONFIG=configs/default_v2_long.yaml
V2REL := SRC=runs/default_v2_long DST=runs/default_v2_rel STEP=12000 CONFIG=configs/default_v2_rel.yaml
default-model-v2: $(STAMP)
	$(VENV)/bin/latentdiff train configs/default_v2.yaml --resume
	[ -d runs/default_v2_long ] || $(V2) bash scripts/default_long.sh init
	$(V2) bash scripts/default_long.sh train
	[ -d data/shapes-train-v2-rel ] || $(VPY) scripts/relation_captions.py data/shapes-train-v2 data/shapes-train-v2-rel
	[ -d runs/default_v2_rel ] || $(V2REL) bash scripts/default_long.sh init
	$(V2REL) bash scripts/default_long.sh train
	bash scripts/companions.sh runs/default_v2_rel/model classifier segmap gligen layout   # layout last: the one installed last is the default layout condition

# Fine-tune the inpainting model from the shipped default model's U-Net (runs/default_long/model), then
# ship it in fp16 inside the package: configs/inpaint.yaml is the whole recipe, seven phases, each going on
# from the one before (its header says how and why; CPU times in docs/inpaint.md). Resumable: a finished
# phase is skipped, an interrupted one goes on.
inpaint-model: $(STAMP)
	$(VENV)/bin/latentdiff train-inpaint configs/inpaint.yaml --resume
	rm -rf latentdiff/assets/inpaint_model
	$(VENV)/bin/latentdiff export --model runs/default_long-inpaint7/model --format diffusers --dtype fp16 --out latentdiff/assets/inpaint_model
	rm -rf latentdiff/assets/inpaint_model/clip   # the CLIP towers ship once, with the default model
	$(VPY) scripts/link_shared_weights.py latentdiff/assets/inpaint_model   # frozen VAE, text encoder, tokenizer: stored once
