# fss_lab: the two commands a user needs are `make quickstart` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RESULTS ?= results

.PHONY: env quickstart quickstart-camvid test test-fast bench clean-env

# Create the virtual environment once (torch/torchvision pinned for CI by constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[notebooks,dev]"
	touch $@

env: $(VENV)/.installed

# Run the quickstart notebook on the offline generated data; executed notebook + figures land in results/.
quickstart: env
	mkdir -p $(RESULTS)/00_quickstart
	$(BIN)/papermill notebooks/00_quickstart.ipynb $(RESULTS)/00_quickstart/00_quickstart.ipynb \
		-k python3 -p RESULTS_DIR $(abspath $(RESULTS))/00_quickstart

# The same notebook on real street scenes (needs ../shared/data/camvid or CAMVID_ROOT).
CAMVID_ROOT ?= $(abspath ../shared/data/camvid)
quickstart-camvid: env
	mkdir -p $(RESULTS)/00_quickstart_camvid
	$(BIN)/papermill notebooks/00_quickstart.ipynb $(RESULTS)/00_quickstart_camvid/00_quickstart.ipynb \
		-k python3 -p DATASET camvid -p DATA_ROOT $(CAMVID_ROOT) -p RESULTS_DIR $(abspath $(RESULTS))/00_quickstart_camvid

# Every test: unit tests, property tests, and the notebooks executed with papermill and checked with nbval.
test: env
	TQDM_DISABLE=1 $(BIN)/python -m pytest

test-fast: env
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m "not notebook and not slow"

bench: env
	$(BIN)/python bench/feature_cache.py

clean-env:
	rm -rf $(VENV)
