# One-command set-up: `make run` (the seed's example) and `make test` (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := etcd-server wsclean chromium

.PHONY: setup system-deps run test render lint bench clean

$(BIN)/batch-imaging: pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	@command -v etcd >/dev/null && command -v wsclean >/dev/null && \
		command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); }

setup: $(BIN)/batch-imaging

run: setup
	$(BIN)/batch-imaging run examples/batch_imaging.json

test: setup system-deps
	$(BIN)/python -m pytest -q -n auto --dist loadscope

render: setup
	$(BIN)/batch-imaging render

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf buffers .pytest_cache
