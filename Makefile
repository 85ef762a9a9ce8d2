# Two commands a newcomer needs (see README): `make demo` and `make test`.
# Both create .venv with the pinned versions in constraints/ci.txt; nothing else is downloaded.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/python -m pip
PINS = -c constraints/ci.txt

.PHONY: demo test setup-core setup-all clean mutation

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: pip then takes the pinned local wheels instead of resolving a newer CUDA build.
$(VENV)/.core: $(VENV)/bin/python pyproject.toml constraints/ci.txt
	$(PIP) install -q $(PINS) torch torchvision
	$(PIP) install -q $(PINS) -e ".[train]"
	touch $@

# llava-torch pins torch 2.0.1 / transformers 4.36.2: install it without its deps, then ours.
$(VENV)/.all: $(VENV)/.core
	$(PIP) install -q $(PINS) --no-deps llava-torch
	$(PIP) install -q $(PINS) -e ".[train,llava,lmms,eval,test]"
	$(VENV)/bin/toklip-patch llava
	touch $@

setup-core: $(VENV)/.core
setup-all: $(VENV)/.all

demo: $(VENV)/.core
	$(VENV)/bin/toklip-demo

test: $(VENV)/.all
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Mutation testing (tests/MUTATION.md), not part of .ci/run: one worker, each module group against
# its fast tests, in build/mutation/GROUP. `make mutation GROUPS="checkpoints models"` runs some.
MUTMUT = mutmut==3.8.1
GROUPS ?=

mutation: $(VENV)/.all
	$(PIP) install -q $(PINS) "$(MUTMUT)"
	$(VENV)/bin/python tests/run_mutation.py $(GROUPS)

clean:
	rm -rf $(VENV) build *.egg-info
