"""The main job tells one story: notebook 04 trains a run, and notebooks 05 and 06 and the
report evaluate exactly that run (its identity flows through the result files), while the
committed reference is left alone. Runs the real notebooks under the smoke profile."""

import json
import shutil
from pathlib import Path

import pytest

from lungseg_utils import config, experiments, inference, io, report

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("04_training", "05_evaluation", "06_tta")


def _execute(name: str) -> None:
    import jupytext
    import nbclient

    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()


@pytest.mark.slow
def test_notebooks_05_06_and_the_report_evaluate_the_run_04_trained(tmp_path, monkeypatch):
    if config.find_data_dir() is None or config.native_data_dir() is None:
        pytest.skip("needs the shared LCTSC scans (../shared/data)")
    run, figures = tmp_path / "main_run", tmp_path / "figures"
    monkeypatch.setenv("LUNGSEG_RUN", str(run))            # the kernels inherit these
    monkeypatch.setenv("LUNGSEG_PROFILE", "smoke")
    monkeypatch.setenv("LUNGSEG_FIGURES_DIR", str(figures))
    reference = {p: io.file_sha256(p) for p in config.REFERENCE_DIR.rglob("*") if p.is_file()}
    for name in NOTEBOOKS:
        _execute(name)
    manifest = io.load_json(run / inference.MANIFEST)       # 04 trained the smoke ensemble here
    assert manifest["profile"] == "smoke" and len(manifest["members"]) == 2
    identity = experiments.run_identity(run)
    assert identity["model_sha256"] and identity["manifest_sha256"]
    evaluation, tta = (io.load_json(run / n) for n in ("evaluation.json", "tta.json"))
    assert evaluation["run"] == identity and tta["run"] == identity
    assert evaluation["model"] == experiments.rel_path(run / inference.MANIFEST)
    assert evaluation["scoring"] == "out_of_fold" and "cross_validation" not in evaluation
    folds = {c: f"CV fold {m['fold']}" for m in manifest["members"] for c in m["test"]}
    for grid in ("grid64", "native"):                        # each case by its own member
        oof = {r["case_id"]: r["model"] for r in evaluation[grid]["cases"]}
        assert oof and all(folds[c] == m for c, m in oof.items())
    assert evaluation["test_cases"] == sorted(oof)
    for name in report.REPORT_FIGURES[:2]:                  # made by 02 and 03, not run here
        for ext in ("png", "pdf"):
            shutil.copy(ROOT / "figures" / f"{name}.{ext}", figures / f"{name}.{ext}")
    pdf = report.build_report(run, figures, tmp_path / "out" / "report.pdf")
    numbers = json.loads((pdf.parent / report.NUMBERS_NAME).read_text())
    assert numbers["run"] == identity and numbers["results_dir"] == identity["run"]
    assert numbers["training"]["profile"] == "smoke" and numbers["facts"]["out_of_fold"]
    assert numbers["n_cases"]["test"] == str(len(oof)) and numbers["ensemble"]["members"] == "2"
    after = {p: io.file_sha256(p) for p in config.REFERENCE_DIR.rglob("*") if p.is_file()}
    assert after == reference                                # the reference is untouched
