# Thin wrapper: every target is a few lines; the logic lives in lungseg_utils/ (and the
# measurements in benchmarks/, which only `make bench` runs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NOTEBOOKS := 01_data_exploration 02_preprocessing 03_augmentation_preview 04_training 05_evaluation 06_tta viewer

.PHONY: all setup notebooks report test bench robustness

## all: the main job — environment, every notebook top to bottom, figures, report
all: setup notebooks report

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

## setup: create .venv and install the package with its dev extra (once)
setup: $(VENV)/.installed

## notebooks: run each notebook in order (LUNGSEG_PROFILE, default quick), outputs in place
notebooks: setup
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($${LUNGSEG_PROFILE:-quick})"; \
	  $(PY) -m jupytext --quiet --to ipynb --update notebooks/$$nb.py || exit 1; \
	  $(PY) -m jupyter nbconvert --log-level=WARN --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=7200 notebooks/$$nb.ipynb || exit 1; \
	done

## report: rebuild report/report.pdf from the result files (seconds)
report: setup
	$(PY) -m lungseg_utils.report

## test: the whole suite — unit tests, notebooks under nbval (smoke profile), browser test
test: setup
	$(PY) -m pytest tests notebooks --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900 \
	  -p no:cacheprovider -q -rs

## bench: speed and memory into benchmarks/results.json, RESULTS.md and README's bench block
##        (on an idle machine; `benchmarks/run.py --isa avx2` adds the AVX2-only column)
bench: setup
	$(PY) benchmarks/run.py

## robustness: the robustness suite (controlled shifts of the native scans, scored out of
##             fold) of the reference ensemble into results/reference/robustness.json
robustness: setup
	$(PY) -m lungseg_utils.robustness --ensemble results/reference \
	  --out results/reference/robustness.json --overwrite
