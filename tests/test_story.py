"""The main job tells one story: notebook 04 trains a run, and notebooks 05 and 06 and the
report evaluate exactly that run (its identity flows through the result files), while the
committed reference is left alone. Runs the real notebooks under the smoke profile: under
``make test`` it checks the run that nbval's notebooks made in the same session (it runs after
them, tests/conftest.py), else it executes notebooks 04, 05 and 06 itself."""

import json
import os
import shutil
from pathlib import Path

import pytest

from lungseg_utils import config, experiments, inference, dataio
from lungseg_utils.report import build

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("04_training", "05_evaluation", "06_tta")


def _execute(name: str) -> None:
    import jupytext
    import nbclient

    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()


def _digests() -> dict:
    return {p: dataio.file_sha256(p) for p in config.REFERENCE_DIR.rglob("*") if p.is_file()}


def _story_run(nbval_story, tmp_path, monkeypatch):
    """``(run, figures, the reference's digests before notebook 04)``. Under ``make test``
    nbval has just run the notebooks on the session's smoke run (``nbval_story``,
    tests/conftest.py): that run, with a copy of the session's figures. Else a run of the
    test's own, made by executing notebooks 04, 05 and 06 here."""
    figures = tmp_path / "figures"
    if nbval_story is not None and nbval_story.complete():
        failed = [c for cells in nbval_story.failed.values() for c in cells]
        if not (nbval_story.run / inference.MANIFEST).exists():
            pytest.fail(f"notebook 04 under nbval left no {inference.MANIFEST} in "
                        f"{nbval_story.run}; its failed cells: {failed}")
        shutil.copytree(os.environ["LUNGSEG_FIGURES_DIR"], figures)   # what the kernels used
        return nbval_story.run, figures, nbval_story.reference
    run = tmp_path / "main_run"
    monkeypatch.setenv("LUNGSEG_RUN", str(run))            # the kernels inherit these
    monkeypatch.setenv("LUNGSEG_PROFILE", "smoke")
    monkeypatch.setenv("LUNGSEG_FIGURES_DIR", str(figures))
    reference = _digests()
    for name in NOTEBOOKS:
        _execute(name)
    return run, figures, reference


@pytest.mark.slow
def test_notebooks_05_06_and_the_report_evaluate_the_run_04_trained(tmp_path, monkeypatch,
                                                                      nbval_story):
    if config.find_data_dir() is None or config.native_data_dir() is None:
        pytest.skip("needs the shared LCTSC scans (../shared/data)")
    run, figures, reference = _story_run(nbval_story, tmp_path, monkeypatch)
    manifest = dataio.load_json(run / inference.MANIFEST)       # 04 trained the smoke ensemble here
    assert manifest["profile"] == "smoke" and len(manifest["members"]) == 2
    identity = experiments.run_identity(run)
    assert identity["model_sha256"] and identity["manifest_sha256"]
    evaluation, tta = (dataio.load_json(run / n) for n in ("evaluation.json", "tta.json"))
    assert evaluation["run"] == identity and tta["run"] == identity
    assert evaluation["model"] == dataio.portable_path(run / inference.MANIFEST)
    assert evaluation["scoring"] == "out_of_fold" and "cross_validation" not in evaluation
    folds = {c: f"CV fold {m['fold']}" for m in manifest["members"] for c in m["test"]}
    for grid in ("grid64", "native"):                        # each case by its own member
        oof = {r["case_id"]: r["model"] for r in evaluation[grid]["cases"]}
        assert oof and all(folds[c] == m for c, m in oof.items())
    assert evaluation["test_cases"] == sorted(oof)
    for name in build.REPORT_FIGURES[:2]:      # made by 02 and 03: nbval's, else the committed
        for ext in ("png", "pdf"):
            if not (figures / f"{name}.{ext}").exists():
                shutil.copy(ROOT / "figures" / f"{name}.{ext}", figures / f"{name}.{ext}")
    pdf = build.build_report(run, figures, tmp_path / "out" / "report.pdf")
    numbers = json.loads((pdf.parent / build.NUMBERS_NAME).read_text())
    assert numbers["run"] == identity and numbers["results_dir"] == identity["run"]
    assert numbers["training"]["profile"] == "smoke" and numbers["facts"]["out_of_fold"]
    assert numbers["n_cases"]["test"] == str(len(oof)) and numbers["ensemble"]["members"] == "2"
    assert _digests() == reference                                # the reference is untouched
