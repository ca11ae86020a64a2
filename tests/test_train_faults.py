"""Training killed at any point: resumed to the same artifacts, or told what is missing.

Each test runs the train command in a subprocess with the tiny smoke network and
``LUNGSEG_FAULT_AT=<point>`` (lungseg_utils.runs.state.fault), so that the process kills
itself with SIGKILL exactly there, as a power cut would; then it resumes the run with
``--resume`` in a fresh process and compares with a run that was never interrupted: the
session's ``smoke_run`` (tests/conftest.py), trained with the same settings.

The killed runs are started together, one process each, the first time a test needs one
(their imports of TensorFlow overlap), and each test resumes a copy of its own.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg_utils import dataio
from lungseg_utils.runs import state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
#: The train command with the tests' tiny network (the command line has no --depth flag).
COMMAND = ("import sys; from lungseg_utils import config; "
           "from lungseg_utils.runs import training; "
           "config.PROFILES['smoke'].update(depth=1, base_filters=2, epochs=2); "
           "sys.exit(training.main(sys.argv[1:]))")


def _train(args, fault=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LUNGSEG_FAULT_AT"}
    if fault:
        env["LUNGSEG_FAULT_AT"] = fault
    return subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


#: Where the killed runs stop: after the first of two epochs, half-way through writing the
#: final model, between the models and the test metrics, and before the settings are written.
POINTS = ("epoch_end:0", "mid_final_save", "before_test_metrics", "after_split")


def _log(run_dir) -> list[dict]:
    with open(run_dir / state.LOG_NAME, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def killed(demo_data, tmp_path_factory):
    """``killed(point, dest)``: a copy, in ``dest``, of the run folder a train command left
    when it was killed at ``point`` (one of :data:`POINTS`), started with the settings of
    ``smoke_run``."""
    root = tmp_path_factory.mktemp("killed")
    procs = {}
    for i, point in enumerate(POINTS):
        env = {**os.environ, "LUNGSEG_FAULT_AT": point}
        with open(root / f"{i}.log", "w") as log:
            procs[point] = subprocess.Popen(
                [sys.executable, "-c", COMMAND, "--profile", "smoke", "--data_dir",
                 str(demo_data), "--out_dir", str(root / str(i)), "--verbose", "0"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        codes = {point: proc.wait(timeout=600) for point, proc in procs.items()}
    finally:
        for proc in procs.values():       # none left behind if one of them hangs
            if proc.poll() is None:
                proc.kill()

    def copy(point, dest: Path) -> Path:
        i = POINTS.index(point)
        assert codes[point] == -signal.SIGKILL, (root / f"{i}.log").read_text()[-3000:]
        (run_dir,) = (root / str(i)).glob("run_*")
        return Path(shutil.copytree(run_dir, dest / run_dir.name))

    return copy


def _refused_as_finished(run_dir, capsys):
    """``--resume`` of a finished run: exit status 2 and a one-line reason (in this process:
    the check comes before any training)."""
    from lungseg_utils.runs import training

    capsys.readouterr()
    assert training.main(["--resume", str(run_dir)]) == 2
    assert "has finished" in capsys.readouterr().err


@pytest.mark.parametrize("point", ["epoch_end:0", "mid_final_save", "before_test_metrics"])
def test_a_run_killed_anywhere_resumes_to_the_same_artifacts(killed, tmp_path, smoke_run, point,
                                                            capsys):
    run_dir, whole = killed(point, tmp_path), smoke_run
    assert not state.is_finished(run_dir)
    if point == "mid_final_save":
        assert list(run_dir.glob(".tmp_*"))             # the half-written model, not final's
        assert not (run_dir / "final_model.keras").exists()
    resumed = _train(["--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr
    assert state.is_finished(run_dir) and not list(run_dir.glob(".tmp_*"))
    assert not (run_dir / state.BACKUP_DIR).exists()
    assert [r["epoch"] for r in _log(run_dir)] == ["0", "1"]          # no row twice
    for key in ("loss", "val_loss", "dice"):
        assert [float(r[key]) for r in _log(run_dir)] == pytest.approx(
            [float(r[key]) for r in _log(whole)], rel=1e-5), key
    ours, theirs = (dataio.load_json(d / "test_metrics.json") for d in (run_dir, whole))
    assert ours["mean_dice"] == pytest.approx(theirs["mean_dice"], rel=1e-5)
    _refused_as_finished(run_dir, capsys)


def test_a_run_killed_before_its_settings_says_what_to_do(killed, tmp_path, capsys):
    from lungseg_utils.runs import training

    run_dir = killed("after_split", tmp_path)
    assert (run_dir / "split.json").is_file() and not (run_dir / "train_config.json").exists()
    capsys.readouterr()
    assert training.main(["--resume", str(run_dir)]) == 2  # refused before any training
    stderr = capsys.readouterr().err
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert "no train_config.json" in line and "start a new run" in line
    assert "Traceback" not in stderr


def test_an_empty_model_left_by_an_old_version_is_recovered(killed, tmp_path, smoke_run):
    """A 0-byte final_model.keras (what a kill during the save used to leave) and no
    test_metrics.json: the run is not 'finished'; resuming rebuilds both."""
    run_dir, whole = killed("before_test_metrics", tmp_path), smoke_run
    (run_dir / "final_model.keras").write_bytes(b"")
    (run_dir / ".tmp_final_model_x.keras").write_bytes(b"partial")
    resumed = _train(["--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr
    assert state.is_valid_model(run_dir / "final_model.keras")
    assert not list(run_dir.glob(".tmp_*"))
    assert dataio.load_json(run_dir / "test_metrics.json")["mean_dice"] == pytest.approx(
        dataio.load_json(whole / "test_metrics.json")["mean_dice"], rel=1e-5)
