"""Training killed at any point: resumed to the same artifacts, or told what is missing.

Each test runs the train command in a subprocess with the tiny smoke network and
``LUNGSEG_FAULT_AT=<point>`` (lungseg_utils.runstate.fault), so that the process kills
itself with SIGKILL exactly there, as a power cut would; then it resumes the run with
``--resume`` in a fresh process and compares with a run that was never interrupted.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg_utils import dataio, runstate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
#: The train command with the tests' tiny network (the command line has no --depth flag).
COMMAND = ("import sys; from lungseg_utils import config, train; "
           "config.PROFILES['smoke'].update(depth=1, base_filters=2, epochs=2); "
           "sys.exit(train.main(sys.argv[1:]))")


def _train(args, fault=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LUNGSEG_FAULT_AT"}
    if fault:
        env["LUNGSEG_FAULT_AT"] = fault
    return subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _start(demo_data, out, fault=None):
    return _train(["--profile", "smoke", "--data_dir", demo_data, "--out_dir", out,
                   "--verbose", "0"], fault)


def _log(run_dir) -> list[dict]:
    with open(run_dir / runstate.LOG_NAME, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def whole(demo_data, tmp_path_factory):
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("whole")
    done = _start(demo_data, out)
    assert done.returncode == 0, done.stderr
    (run_dir,) = out.glob("run_*")
    return run_dir


@pytest.mark.parametrize("point", ["epoch_end:0", "mid_final_save", "before_test_metrics"])
def test_a_run_killed_anywhere_resumes_to_the_same_artifacts(demo_data, tmp_path, whole, point):
    killed = _start(demo_data, tmp_path, fault=point)
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = tmp_path.glob("run_*")
    assert not runstate.is_finished(run_dir)
    if point == "mid_final_save":
        assert list(run_dir.glob(".tmp_*"))             # the half-written model, not final's
        assert not (run_dir / "final_model.keras").exists()
    resumed = _train(["--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr
    assert runstate.is_finished(run_dir) and not list(run_dir.glob(".tmp_*"))
    assert not (run_dir / runstate.BACKUP_DIR).exists()
    assert [r["epoch"] for r in _log(run_dir)] == ["0", "1"]          # no row twice
    for key in ("loss", "val_loss", "dice"):
        assert [float(r[key]) for r in _log(run_dir)] == pytest.approx(
            [float(r[key]) for r in _log(whole)], rel=1e-5), key
    ours, theirs = (dataio.load_json(d / "test_metrics.json") for d in (run_dir, whole))
    assert ours["mean_dice"] == pytest.approx(theirs["mean_dice"], rel=1e-5)
    again = _train(["--resume", run_dir])
    assert again.returncode == 2 and "has finished" in again.stderr


def test_a_run_killed_before_its_settings_says_what_to_do(demo_data, tmp_path):
    killed = _start(demo_data, tmp_path, fault="after_split")
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = tmp_path.glob("run_*")
    assert (run_dir / "split.json").is_file() and not (run_dir / "train_config.json").exists()
    resumed = _train(["--resume", run_dir])
    assert resumed.returncode == 2
    (line,) = [ln for ln in resumed.stderr.splitlines() if ln.startswith("error:")]
    assert "no train_config.json" in line and "start a new run" in line
    assert "Traceback" not in resumed.stderr


def test_an_empty_model_left_by_an_old_version_is_recovered(demo_data, tmp_path, whole):
    """A 0-byte final_model.keras (what a kill during the save used to leave) and no
    test_metrics.json: the run is not 'finished'; resuming rebuilds both."""
    killed = _start(demo_data, tmp_path, fault="before_test_metrics")
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = tmp_path.glob("run_*")
    (run_dir / "final_model.keras").write_bytes(b"")
    (run_dir / ".tmp_final_model_x.keras").write_bytes(b"partial")
    resumed = _train(["--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr
    assert runstate.is_valid_model(run_dir / "final_model.keras")
    assert not list(run_dir.glob(".tmp_*"))
    assert dataio.load_json(run_dir / "test_metrics.json")["mean_dice"] == pytest.approx(
        dataio.load_json(whole / "test_metrics.json")["mean_dice"], rel=1e-5)
