"""lungseg_utils.config: finding the data (in the documented order, writing nothing),
profiles and overrides, run folders, seeds, versions and the quiet Keras import."""

import random
import re
import subprocess
import sys

import numpy as np
import pytest

from lungseg_utils import augment, config
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.synthetic import write_demo_dataset


@pytest.fixture
def bare_repo(tmp_path, monkeypatch):
    """A checkout at tmp_path/repo with no data of its own and no ../shared beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.delenv("LUNGSEG_DATA", raising=False)
    monkeypatch.setattr(config, "REPO_ROOT", repo)
    monkeypatch.setattr(config, "SYNTHETIC_DIR", repo / "data" / "synthetic")
    return repo


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_find_data_dir_order_and_writes_nothing(tmp_path, monkeypatch, bare_repo):
    before = _tree(tmp_path)
    assert config.find_data_dir() is None                   # nothing anywhere: None ...
    assert _tree(tmp_path) == before                        # ... and nothing written
    write_demo_dataset(tmp_path / "shared" / "data" / "lctsc64", n_cases=1)
    assert config.shared_data_root() == tmp_path / "shared" / "data"
    assert config.find_data_dir() == tmp_path / "shared" / "data" / "lctsc64"   # 3. shared
    write_demo_dataset(bare_repo / "data", n_cases=1)
    assert config.find_data_dir() == bare_repo / "data"                          # 2. data/
    write_demo_dataset(tmp_path / "mine", n_cases=1)
    monkeypatch.setenv("LUNGSEG_DATA", str(tmp_path / "mine"))
    assert config.find_data_dir() == (tmp_path / "mine").resolve()               # 1. the env
    monkeypatch.setenv("LUNGSEG_DATA", str(tmp_path / "nothing"))
    with pytest.raises(LungsegInputError, match="LUNGSEG_DATA"):
        config.find_data_dir()


def test_native_data_dir(tmp_path, monkeypatch, bare_repo):
    monkeypatch.delenv("LUNGSEG_NATIVE_DATA", raising=False)
    assert config.native_data_dir() is None
    write_demo_dataset(tmp_path / "native", n_cases=1)
    monkeypatch.setenv("LUNGSEG_NATIVE_DATA", str(tmp_path / "native"))
    assert config.native_data_dir() == tmp_path / "native"


def test_profiles_and_overrides(monkeypatch):
    monkeypatch.setenv("LUNGSEG_PROFILE", "smoke")
    p = config.get_profile()
    assert p["profile"] == "smoke" and p["epochs"] <= 2
    assert config.profile_name() == "smoke" and config.profile_name("full") == "full"
    assert config.get_profile("full")["epochs"] == 150
    quick = config.get_profile("quick", epochs=3, base_filters=None)
    assert quick["epochs"] == 3 and quick["base_filters"] == 16      # None: the profile's value
    quick["epochs"] = 99
    assert config.PROFILES["quick"]["epochs"] == 150                 # a copy
    monkeypatch.delenv("LUNGSEG_PROFILE")
    assert config.profile_name() == "main"
    with pytest.raises(LungsegInputError, match="Unknown profile"):
        config.get_profile("huge")
    with pytest.raises(LungsegInputError, match="Unknown setting"):
        config.get_profile("quick", colour="red")
    for name, prof in config.PROFILES.items():
        assert set(augment.AUGMENT_DEFAULTS) <= set(prof), name     # every profile complete
        assert set(config.PROFILES["quick"]) == set(prof), name


def test_new_run_dir_never_reuses(tmp_path, monkeypatch):
    a, b = config.new_run_dir(tmp_path), config.new_run_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert re.fullmatch(r"run_\d{8}-\d{6}(_\d+)?", a.name)
    monkeypatch.setenv("LUNGSEG_RUNS_DIR", str(tmp_path / "env_runs"))
    assert config.new_run_dir().parent == tmp_path / "env_runs"
    assert config.new_run_dir(prefix="cv").name.startswith("cv_")


def test_set_seeds_repeats_every_generator():
    keras = config.import_keras_quietly()

    def draw():
        return (random.random(), np.random.rand(), float(keras.random.uniform((1,))[0]))

    config.set_seeds(7)
    first = draw()
    config.set_seeds(7)
    assert draw() == first
    config.set_seeds(8)
    assert draw() != first


def test_package_versions():
    import keras
    import numpy

    v = config.package_versions()
    assert v["numpy"] == numpy.__version__ and v["keras"] == keras.__version__
    assert v["python"].count(".") == 2 and v["keras_backend"] == keras.backend.backend()


def test_quiet_keras_import_prints_nothing_on_fd2():
    code = ("from lungseg_utils.config import import_keras_quietly; k = import_keras_quietly(); "
            "print(k.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=config.REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3.")
    assert out.stderr.strip() == ""


def test_onednn_kernels_are_asked_for_before_tensorflow_loads():
    """config sets TF_ENABLE_ONEDNN_OPTS=1 (TF leaves oneDNN off on AVX2-only CPUs, ~4x slower
    training), keeps a user's own choice, and TensorFlow then runs with oneDNN on."""
    code = ("import os; os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None)\n"
            "from lungseg_utils import config; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])\n"
            "config.import_keras_quietly()\n"
            "from tensorflow.python.util import _pywrap_util_port as p; print(p.IsMklEnabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=config.REPO_ROOT, timeout=300)
    assert out.stdout.split() == ["1", "True"], out.stderr[-2000:]
    keep = ("import os; os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'\n"
            "from lungseg_utils import config; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])\n")
    out = subprocess.run([sys.executable, "-c", keep], capture_output=True, text=True,
                         cwd=config.REPO_ROOT, timeout=60)
    assert out.stdout.split() == ["0"], out.stderr[-2000:]


def test_active_run_is_the_reference_unless_lungseg_run_names_another(monkeypatch, tmp_path):
    monkeypatch.delenv("LUNGSEG_RUN", raising=False)
    assert config.active_run_dir() == config.REFERENCE_DIR
    monkeypatch.setenv("LUNGSEG_RUN", "results/models/main_x")
    assert config.active_run_dir() == (config.REPO_ROOT / "results/models/main_x").resolve()
    assert not config.active_run_dir().exists()                   # finding it writes nothing
    monkeypatch.setenv("LUNGSEG_RUN", str(tmp_path))
    assert config.active_run_dir() == tmp_path.resolve()
    main = config.get_profile("main")
    assert main["folds"] >= 2 and main["base_filters"] == 16
    assert main["budget_min"] is None and main["epochs"] > 1     # the recipe: fixed epochs
    assert main["checkpoint"] == "last" and main["lr_schedule"] == "cosine"
