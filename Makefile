# Thin wrapper: every target is a few lines; the logic lives in lungseg_utils/ (and the
# measurements in benchmarks/, which only `make bench` runs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NOTEBOOKS := $(addprefix notebooks/,01_data_exploration 02_preprocessing \
               03_augmentation_preview 04_training 05_evaluation 06_tta) app/viewer

.PHONY: all setup notebooks report test bench robustness promote reference

#: The run the notebooks and the report work on (config.active_run_dir). `make all` makes a
#: new folder for notebook 04 to train into; RUN=results/reference skips training and
#: evaluates the committed reference. Alone, `make notebooks` and `make report` use the reference.
RUN ?=

## all: the main job — environment, every notebook top to bottom (04 trains a new run,
##      05/06/viewer/report evaluate it), figures, report; its wall time goes to RUN/job.json
all:
	@run="$(RUN)"; run="$${run:-results/models/main_$$(date +%Y%m%d-%H%M%S)}"; t0=$$(date +%s); \
	$(MAKE) --no-print-directory setup && \
	$(MAKE) --no-print-directory notebooks RUN="$$run" && \
	$(PY) -m lungseg_utils.report.build --results_dir "$$run" --job_started "$$t0"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m lungseg_utils export-ir >/dev/null || echo "note: the reference's OpenVINO model was not exported; lungseg segment will run on TensorFlow"
	touch $@

## setup: create .venv and install the package with its dev extra (once)
setup: $(VENV)/.installed

## notebooks: run each notebook in order (LUNGSEG_PROFILE, default main) on RUN, outputs in place
##            (kernel traffic encrypted with CurveZMQ where the kernel supports it: no TCP warning)
notebooks: setup
	@export LUNGSEG_RUN="$(or $(RUN),results/reference)"; echo "== run: $$LUNGSEG_RUN"; \
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($${LUNGSEG_PROFILE:-main})"; \
	  $(PY) -m jupytext --quiet --to ipynb --update $$nb.py || exit 1; \
	  $(PY) -m jupyter nbconvert --log-level=WARN --to notebook --execute --inplace \
	    --KernelManager.transport_encryption=auto \
	    --ExecutePreprocessor.timeout=7200 $$nb.ipynb || exit 1; \
	done

## report: rebuild report/report.pdf and README's results from RUN's result files (seconds)
report: setup
	$(PY) -m lungseg_utils.report.build --results_dir "$(or $(RUN),results/reference)"

## reference: rebuild the committed reference from random weights — the main job (the `main`
##            recipe, a fixed number of epochs: the same model on a busy or an idle machine)
##            into a new run, then that run promoted to results/reference and its members
##            stored at half precision (what that changes: results/reference/storage.json),
##            then exported to OpenVINO once (its cache key: the stored members' SHA-256)
reference:
	@run="results/models/main_$$(date +%Y%m%d-%H%M%S)"; \
	$(MAKE) --no-print-directory all RUN="$$run" && \
	$(PY) -m lungseg_utils.study.reference "$$run" && \
	$(PY) -m lungseg_utils.study.compact results/reference && \
	$(PY) -m lungseg_utils export-ir

## promote: make RUN (a finished `make all` run) the committed reference, results/reference
promote: setup
	@test -n "$(RUN)" || { echo "usage: make promote RUN=results/models/main_..."; exit 2; }
	$(PY) -m lungseg_utils.study.reference "$(RUN)"
	$(PY) -m lungseg_utils export-ir

## test: the whole suite — unit tests, notebooks and the app under nbval (smoke profile), browser test
test: setup
	$(PY) -m pytest tests notebooks app --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900 \
	  -p no:cacheprovider -q -rs

## bench: speed and memory into benchmarks/results.json, RESULTS.md and README's bench block
##        (on an idle machine; run on an AVX2-only CPU, it adds that column)
bench: setup
	$(PY) benchmarks/run.py

## robustness: the robustness suite (controlled shifts of the native scans, scored out of
##             fold) of RUN's ensemble (default the reference) into RUN/robustness.json;
##             notebook 05 and the report show it
robustness: setup
	$(PY) -m lungseg_utils.study.robustness --ensemble "$(or $(RUN),results/reference)" \
	  --out "$(or $(RUN),results/reference)/robustness.json" --overwrite
