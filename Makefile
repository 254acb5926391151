# latentdiff: the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs the project into it when missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision first and pinned: on the project machines they come from local disk.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow lint clean

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
