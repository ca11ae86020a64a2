"""The project's own files: environment recipe, notebook pairs, data resolution, profiles."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from lungseg_utils import config
from lungseg_utils.errors import LungsegInputError

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert '-e ".[dev]"' in pip
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    assert listed == wanted
    assert "tensorflow" in wanted and "tensorflow-cpu" not in wanted


def test_every_notebook_is_a_synced_jupytext_pair():
    import jupytext

    pys = sorted((ROOT / "notebooks").glob("*.py"))
    assert len(pys) >= 2
    for py in pys:
        nb = py.with_suffix(".ipynb")
        assert nb.exists(), f"{py.name} has no paired {nb.name}"
        a = [(c.cell_type, c.source.strip()) for c in jupytext.read(py).cells]
        b = [(c.cell_type, c.source.strip()) for c in jupytext.read(nb).cells]
        assert a == b, f"{py.name} and {nb.name} differ: run jupytext --sync and re-execute"


def test_executed_notebooks_have_outputs():
    import nbformat

    for nb_path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{nb_path.name} has unexecuted cells"


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGSEG_DATA", str(tmp_path / "nothing"))
    with pytest.raises(LungsegInputError, match="LUNGSEG_DATA"):
        config.resolve_data_dir()
    from lungseg_utils.synthetic import write_demo_dataset

    write_demo_dataset(tmp_path / "mine", n_cases=1)
    monkeypatch.setenv("LUNGSEG_DATA", str(tmp_path / "mine"))
    assert config.resolve_data_dir() == (tmp_path / "mine").resolve()
    monkeypatch.delenv("LUNGSEG_DATA")
    # with no local data, no shared data: the synthetic fallback, announced loudly
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(config, "SYNTHETIC_DIR", tmp_path / "repo" / "data" / "synthetic")
    folder = config.resolve_data_dir(verbose=False)
    assert folder == tmp_path / "repo" / "data" / "synthetic"
    assert len(list(folder.glob("*/ct.nii.gz"))) >= 2


def test_profiles_and_overrides(monkeypatch):
    monkeypatch.setenv("LUNGSEG_PROFILE", "smoke")
    p = config.get_profile()
    assert p["profile"] == "smoke" and p["epochs"] <= 2
    assert config.get_profile("full")["epochs"] == 150
    assert config.get_profile("quick", epochs=3)["epochs"] == 3
    with pytest.raises(LungsegInputError, match="Unknown profile"):
        config.get_profile("huge")
    with pytest.raises(LungsegInputError, match="Unknown setting"):
        config.get_profile("quick", colour="red")


def test_new_run_dir_never_reuses(tmp_path):
    a, b = config.new_run_dir(tmp_path), config.new_run_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert re.fullmatch(r"run_\d{8}-\d{6}(_\d+)?", a.name)


def test_quiet_keras_import_prints_nothing_on_fd2(tmp_path):
    import subprocess
    import sys

    code = "from lungseg_utils.config import import_keras_quietly; k = import_keras_quietly(); print(k.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3.")
    assert out.stderr.strip() == ""
