# The two commands a new user needs: `make demo` and `make test`. Only Python 3.11 and git
# are assumed; uv is bootstrapped with pip when it is missing.
SHELL := /bin/bash
DATA_DIR ?= data
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export PORTFOLIO_DATA_DIR := $(DATA_DIR)

.PHONY: install demo run generate test ui bench clean

# uv: on PATH, or as a module of python3; else pip installs it (into the active virtualenv,
# else the user's site, else past an "externally managed" system Python's guard).
install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv 2>/dev/null \
		|| python3 -m pip install --user --quiet uv 2>/dev/null \
		|| python3 -m pip install --user --quiet --break-system-packages uv
	@$(UV) sync --frozen --quiet

# Generates the demo book only when landing/ is empty, then runs every asset in-process.
demo: install
	@if [ -z "$$(find $(DATA_DIR)/landing -type f 2>/dev/null | head -n 1)" ]; then \
		$(UV) run portfolio generate --scale demo --data-dir $(DATA_DIR); \
	else echo "Using the landing files already in $(DATA_DIR)/landing"; fi
	@$(UV) run portfolio run --data-dir $(DATA_DIR)

run: install
	@$(UV) run portfolio run --data-dir $(DATA_DIR)

test: install
	@$(UV) run pytest -q -n 2 --dist loadfile

# The Dagster UI with a persistent instance (run history, schedules) under data/.
ui: install
	@mkdir -p $(DATA_DIR)/dagster_home
	@cp orchestration/dagster.yaml $(DATA_DIR)/dagster_home/dagster.yaml
	@DAGSTER_HOME=$(abspath $(DATA_DIR))/dagster_home $(UV) run dagster dev -w workspace.yaml

bench: install
	@$(UV) run portfolio bench --data-dir $(DATA_DIR)

clean:
	rm -rf $(DATA_DIR)/lake $(DATA_DIR)/warehouse.duckdb $(DATA_DIR)/.warehouse.shadow.duckdb $(DATA_DIR)/.warehouse.lock $(DATA_DIR)/dagster_home
