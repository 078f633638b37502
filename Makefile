# The two commands: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo serve test test-peers lint format bench-train clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,explain,dev,parquet]'
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python scripts/demo.py

serve: venv
	$(BIN)/imgcls serve --model-repo models

test: venv
	$(BIN)/python -m pytest

# The tests marked `peers`: `imgcls bench compare` against LitServe and Ray Serve, which only the peers
# extra installs (a minute, ray is large). `make test` skips them without it; .ci/run runs this after it.
PEERS_STAMP := $(VENV)/.peers-stamp
$(PEERS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[peers]'
	@touch $(PEERS_STAMP)

test-peers: $(PEERS_STAMP)
	$(BIN)/python -m pytest -m peers

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-train: venv
	$(BIN)/python benchmarks/train_digits.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
