# `make run`: set up, index seeds/, start the chat.  `make test`: set up, run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1

.PHONY: run test index bench chromium clean

# torch first, from the CPU build on this machine's disk, so nothing pulls the multi-GB CUDA build.
$(BIN)/qa: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,milvus,ray]'
	touch $(BIN)/qa

chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

index: $(BIN)/qa
	$(BIN)/qa index --articles seeds --index index

run: index
	$(BIN)/qa serve --articles seeds --index index

test: $(BIN)/qa chromium
	$(BIN)/python -m pytest

bench: $(BIN)/qa
	$(BIN)/python bench/answer_latency.py

clean:
	rm -rf index/gen-* index/CURRENT
