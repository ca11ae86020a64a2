"""Fixtures shared by the test modules.

The expensive ones are made once per test session, on four synthetic phantoms, with the
smallest network that still has every kind of layer (base 2 filters, one level above the
bottleneck, ``SMOKE``):

``smoke_run``      ONE training run (two epochs). Every test that only needs "a trained run
                   folder" or "a model file" uses it.
``smoke_main``     ONE run as notebook 04 trains it (``ensemble.train_main``): a 2-fold
                   cross-validation (two one-epoch members) in ``cv/``, the manifest at the top.
``smoke_cv``       its ``cv/`` folder, and a published copy: the tests of cross-validation,
                   ensembles and the robustness suite use it.

Only the tests of training itself (resume, seeds, the command line, mirrored training)
train models of their own, with the same tiny settings.

The repository's ``conftest.py`` (one folder up) sets the environment for the whole session,
notebooks included: ``LUNGSEG_PROFILE=smoke`` and temporary folders for figures and runs.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest

from lungseg_utils import synthetic

#: Training settings of every run the tests make: the smoke profile, whose U-Net is the
#: smallest with every kind of layer (2 filters, depth 1: ~8 s a run here instead of ~25 s
#: at depth 4), named here so that the tests say what they train.
SMOKE = dict(profile="smoke", base_filters=2, depth=1)
#: Epochs of the shared run: two, so that a run resumed after its first epoch can be
#: compared with it epoch by epoch (tests/test_train.py).
SMOKE_EPOCHS = 2


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Four 64^3 phantoms ``synth_000..003/{ct,lung}.nii.gz`` (split 2 train / 1 val / 1 test)."""
    return synthetic.write_demo_dataset(tmp_path_factory.mktemp("demo_data"), n_cases=4)


@pytest.fixture(scope="session")
def smoke_settings():
    """The keyword arguments of :func:`lungseg_utils.train.train` that made ``smoke_run``."""
    return dict(SMOKE, epochs=SMOKE_EPOCHS)


@pytest.fixture(scope="session")
def smoke_run(demo_data, smoke_settings, tmp_path_factory):
    """The folder of one finished training run on ``demo_data`` (shared: do not modify it)."""
    from lungseg_utils import train

    return train.train(demo_data, tmp_path_factory.mktemp("smoke_runs"), verbose=0,
                       **smoke_settings)


@pytest.fixture(scope="session")
def smoke_main(demo_data, tmp_path_factory):
    """``(run_dir, answer)``: ``ensemble.train_main(run_dir, demo_data, folds=2, seed=42,
    **SMOKE)``, what notebook 04 trains (shared: do not modify ``run_dir``), and what it
    returned. The seed is given as a setting, as a recipe's second seed is."""
    from lungseg_utils import ensemble

    run = tmp_path_factory.mktemp("smoke_main") / "main"
    return run, ensemble.train_main(run, demo_data, folds=2, seed=42, **SMOKE)


@pytest.fixture(scope="session")
def smoke_cv(smoke_main, tmp_path_factory):
    """``(out_dir, published_dir, result)`` of one 2-fold cross-validation of ``demo_data``
    (``cross_validate(k=2, data_dir=demo_data, out_dir=out_dir, **SMOKE)``, run by
    ``smoke_main``): ``out_dir`` holds ``fold_0/run_*``, ``fold_1/run_*``, ``manifest.json``
    and ``cross_validation.json`` (``result``); ``published_dir`` (``.../published/cv``) the
    published copy."""
    from lungseg_utils import dataio
    from lungseg_utils.study import reference

    out = smoke_main[0] / "cv"
    published = tmp_path_factory.mktemp("smoke_cv") / "published" / "cv"
    result = dataio.load_json(out / "cross_validation.json")
    reference.publish(out, published, overwrite=True)      # copies cross_validation.json
    return out, published, result


@pytest.fixture(scope="session")
def smoke_model_path(smoke_run):
    """``best_model.keras`` of the shared run."""
    return smoke_run / "best_model.keras"


@pytest.fixture(scope="session")
def smoke_forward(smoke_model_path):
    """The shared model's compiled forward pass (:func:`lungseg_utils.inference.compiled_forward`)."""
    from lungseg_utils import inference

    return inference.compiled_forward(inference.load_model(smoke_model_path))


def read_log(run_dir) -> list[dict]:
    """Rows of a run's ``training_log.csv``."""
    with open(run_dir / "training_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def training_log():
    """``read_log(run_dir)``: the rows of a run's training_log.csv."""
    return read_log


# ----------------------------------------------------------------------------- the story
#: The notebooks whose run tests/test_story.py checks (04 trains it, 05 and 06 evaluate it).
STORY_NOTEBOOKS = ("04_training", "05_evaluation", "06_tta")


class _NbvalStory:
    """Under ``make test`` nbval runs the notebooks in this session on the session's smoke run
    (``LUNGSEG_RUN``, a new folder the repository's conftest.py names): the same three
    notebooks, the same profile, that tests/test_story.py would otherwise run again on a run
    of its own. When both are collected, the story test runs after the notebooks and checks
    their run (one smoke ensemble trained and evaluated a session, not two).

    A plugin of its own (not a conftest hook): the notebooks lie outside ``tests/``. It
    records, for each of the three notebooks, the cells that ran and failed, and the
    committed reference's digests as notebook 04 starts."""

    def __init__(self, run: Path, cells: dict):
        self.run, self.cells = run, cells
        self.ran = dict.fromkeys(cells, 0)
        self.failed: dict[str, list[str]] = {name: [] for name in cells}
        self.reference: dict | None = None

    @staticmethod
    def notebook(item) -> str | None:
        path = Path(str(item.path))
        if path.suffix == ".ipynb" and path.parent.name == "notebooks" and \
                path.stem in STORY_NOTEBOOKS:
            return path.stem
        return None

    def pytest_runtest_setup(self, item):
        if self.reference is None and self.notebook(item) == STORY_NOTEBOOKS[0]:
            self.reference = reference_digests()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        name = self.notebook(item)
        if name is not None:
            self.ran[name] += report.when == "call"
            if report.failed:
                self.failed[name].append(f"{item.nodeid} ({report.when})")
        return report

    def complete(self) -> bool:
        """Every cell of the three notebooks ran (none deselected or left out)."""
        return self.reference is not None and self.ran == self.cells


def reference_digests() -> dict:
    """SHA-256 of every file of the committed reference, by path."""
    from lungseg_utils import config, dataio

    return {p: dataio.file_sha256(p) for p in config.REFERENCE_DIR.rglob("*") if p.is_file()}


def pytest_collection_modifyitems(session, config, items):
    story = [i for i in items if Path(str(i.path)).name == "test_story.py"]
    cells = Counter(filter(None, map(_NbvalStory.notebook, items)))
    run = Path(os.environ.get("LUNGSEG_RUN", ""))
    if not (story and set(cells) == set(STORY_NOTEBOOKS) and run.is_absolute()
            and not run.exists() and os.environ.get("LUNGSEG_PROFILE") == "smoke"):
        return            # the story test runs the notebooks itself, on a run of its own
    items[:] = [i for i in items if i not in story] + story
    config.pluginmanager.register(_NbvalStory(run, dict(cells)), "lungseg-nbval-story")


@pytest.fixture(scope="session")
def nbval_story(pytestconfig):
    """The :class:`_NbvalStory` of this session, or None when the story test runs the
    notebooks itself (tests without notebooks, a chosen ``LUNGSEG_RUN``, another profile)."""
    return pytestconfig.pluginmanager.get_plugin("lungseg-nbval-story")
