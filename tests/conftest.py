"""Fixtures shared by the test modules.

The expensive ones are made once per test session, on four synthetic phantoms, with the
smallest network that still has every kind of layer (base 2 filters, one level above the
bottleneck, ``SMOKE``):

``smoke_run``      ONE training run (two epochs). Every test that only needs "a trained run
                   folder" or "a model file" uses it.
``smoke_cv``       ONE 2-fold cross-validation (two one-epoch members, published): the
                   tests of cross-validation, ensembles and the robustness suite use it.

Only the tests of training itself (resume, seeds, the command line, mirrored training)
train models of their own, with the same tiny settings.

The repository's ``conftest.py`` (one folder up) sets the environment for the whole session,
notebooks included: ``LUNGSEG_PROFILE=smoke`` and temporary folders for figures and runs.
"""

from __future__ import annotations

import csv

import pytest

from lungseg_utils import synthetic

#: Training settings of every run the tests make: the smoke profile with the smallest
#: U-Net (2 filters, depth 1: ~8 s a run here instead of ~25 s at depth 4).
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
def smoke_cv(demo_data, tmp_path_factory):
    """``(out_dir, published_dir, result)`` of one 2-fold cross-validation of ``demo_data``:
    ``out_dir`` holds ``fold_0/run_*``, ``fold_1/run_*``, ``manifest.json`` and
    ``cross_validation.json``; ``published_dir`` (``.../published/cv``) the published copy."""
    from lungseg_utils import ensemble

    root = tmp_path_factory.mktemp("smoke_cv")
    out, published = root / "cv", root / "published" / "cv"
    result = ensemble.cross_validate(k=2, data_dir=demo_data, out_dir=out, publish_dir=published,
                                     **SMOKE)
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
