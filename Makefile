# fss_lab: the two commands a user needs are `make quickstart` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RESULTS ?= results

.PHONY: env hooks kernel quickstart quickstart-camvid test test-fast test-browser test-lowest book bench clean-env

# Create the virtual environment once (torch/torchvision pinned for CI by constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[notebooks,dev,docs]"
	touch $@

env: $(VENV)/.installed hooks

# Notebooks stay clean in git: .gitattributes routes *.ipynb through this nbstripout filter (outputs, execution
# counts and language_info dropped; cell ids and the kernelspec JupyterLab writes kept). Local git config only.
NBSTRIPOUT := '$(abspath $(BIN))/python' -m nbstripout --keep-id --extra-keys metadata.language_info
hooks: $(VENV)/.installed
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
		git config filter.nbstripout.clean "$(NBSTRIPOUT)"; \
		git config filter.nbstripout.smudge cat; \
		git config filter.nbstripout.required true; \
		git config diff.ipynb.textconv "$(NBSTRIPOUT) -t"; \
	fi

# A named kernel for students who start JupyterLab from another environment: pick "Python 3 (fss_lab)".
kernel: env
	$(BIN)/python -m ipykernel install --user --name fss_lab --display-name "Python 3 (fss_lab)"

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

# Every test: unit tests, property tests, the notebooks executed with papermill and checked with nbval, and the
# browser test (JupyterLab in Debian's Chromium; .ci/run installs chromium when missing).
# Two pytest-xdist workers with one thread each on the 2-core CI machine (notebooks that need the same cached
# checkpoint wait on its file lock, so none is trained twice); TEST_WORKERS=1 for one process.
TEST_WORKERS ?= 2
test: env
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-fast: env
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m "not notebook and not slow and not browser"

# Notebook runs outside CI's 30-minute budget (the CamVid runs of 04b and of the benchmark notebook 08): see the notes
# on each test in tests/test_notebooks.py.
test-heavy: env
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m heavy

test-browser: env
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m browser tests/browser

# The lowest versions pyproject.toml allows (each `>=X` pinned to X; torch/torchvision keep the CI pins), in a
# separate venv, then the fast tests. Not run by CI on every submission. TORCH_FROM=<site-packages of an existing
# install of the CI pins> reuses that torch instead of downloading it again (a .pth file appends it to sys.path;
# everything pinned here is installed into the new venv and shadows it).
LOWEST_VENV ?= .venv-lowest
TORCH_FROM ?=
test-lowest:
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install --quiet --upgrade pip
	@if [ -n "$(TORCH_FROM)" ]; then \
		echo "$(abspath $(TORCH_FROM))" > $$($(LOWEST_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_torch_from.pth; fi
	$(LOWEST_VENV)/bin/python .ci/lowest_constraints.py pyproject.toml > $(LOWEST_VENV)/lowest.txt
	cat constraints.txt >> $(LOWEST_VENV)/lowest.txt
	$(LOWEST_VENV)/bin/pip install --quiet -c $(LOWEST_VENV)/lowest.txt -e ".[dev]"
	$(LOWEST_VENV)/bin/pip freeze > $(LOWEST_VENV)/freeze.txt
	TQDM_DISABLE=1 $(LOWEST_VENV)/bin/python -m pytest -m "not notebook and not slow and not browser" \
		--ignore=tests/browser --ignore=tests/test_notebooks.py -p no:cacheprovider

# The rendered site: execute every notebook (QUICK) into book/executed/, then build HTML with Sphinx + MyST-NB
# (figures included) into book/_build/html; open book/_build/html/index.html.
BOOK_NOTEBOOKS := 00_quickstart 01_base_training 02_gfss_finetuning_triplet 03_contrastive_distillation 04_infomax_diam 07_your_own_images
book: env
	mkdir -p book/executed
	cd notebooks && for nb in $(BOOK_NOTEBOOKS); do \
		TQDM_DISABLE=1 PYTHONPATH=$(CURDIR) $(abspath $(BIN))/papermill $$nb.ipynb ../book/executed/$$nb.ipynb -k python3 \
			-p QUICK True -p RESULTS_DIR $(abspath $(RESULTS))/book/$$nb --no-progress-bar || exit 1; \
	done
	$(BIN)/python -m sphinx -b html -q book book/_build/html
	@echo "site: book/_build/html/index.html"

bench: env
	$(BIN)/python bench/feature_cache.py

clean-env:
	rm -rf $(VENV)
