"""Training runs (smoke profile, synthetic phantoms): artifacts, repeatability, resume."""

import csv
import subprocess
import sys

import pytest

from lungseg_utils import config, io
import lungseg_utils.model  # noqa: F401  (registers the losses and metrics for load_model)
from lungseg_utils import train as trainer
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.synthetic import write_demo_dataset

keras = trainer.keras
ARTIFACTS = ("split.json", "train_config.json", "training_log.csv", "best_model.keras",
             "final_model.keras", "test_metrics.json")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("data"), n_cases=4)


def _log(run_dir):
    with open(run_dir / "training_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_command_line_writes_every_artifact(data_dir, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg_utils.train", "--profile", "smoke", "--data_dir",
         str(data_dir), "--out_dir", str(out), "--verbose", "2"],
        cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = out.glob("run_*")
    for name in ARTIFACTS:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / trainer.BACKUP_DIR).exists()
    assert "Run folder:" in proc.stdout

    cfg = io.load_json(run_dir / "train_config.json")
    split = io.load_json(run_dir / "split.json")
    assert cfg["split"] == split and cfg["settings"]["base_filters"] == 4
    assert len(cfg["input_files"]) == 2 * 4 and cfg["versions"]["keras"] == keras.__version__
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == {
        p.name for p in io.discover_cases(data_dir)}

    rows = _log(run_dir)
    assert len(rows) == 1
    assert {"epoch", "loss", "dice", "iou", "val_loss", "val_dice", "val_iou",
            "learning_rate"} <= set(rows[0])

    metrics = io.load_json(run_dir / "test_metrics.json")
    assert [c["case_id"] for c in metrics["cases"]] == split["test"]
    assert 0.0 <= metrics["mean_dice"] <= 1.0 and 0.0 <= metrics["mean_iou"] <= 1.0

    model = keras.saving.load_model(run_dir / "best_model.keras")
    assert model.output_shape == (None, 64, 64, 64, 1)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        trainer.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data_dir", "--out_dir", "--base_filters", "--reg_l2", "--dropout_enc",
                 "--dropout_dec", "--dropout_bot", "--epochs", "--batch_size", "--p_jitter",
                 "--jitter_sigma", "--seed", "--use_transpose", "--loss", "--profile", "--resume"):
        assert flag in text


def test_same_seed_same_split_and_first_epoch(data_dir, tmp_path):
    runs = [trainer.train(data_dir, tmp_path, profile="smoke", verbose=0) for _ in range(2)]
    assert runs[0] != runs[1]  # a new folder each time
    assert io.load_json(runs[0] / "split.json") == io.load_json(runs[1] / "split.json")
    first = [float(_log(r)[0]["loss"]) for r in runs]
    assert first[1] == pytest.approx(first[0], rel=1e-5)
    val = [float(_log(r)[0]["val_loss"]) for r in runs]
    assert val[1] == pytest.approx(val[0], rel=1e-5)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 2 of 3")


def test_resume_after_interruption(data_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        trainer.train(data_dir, tmp_path, profile="smoke", epochs=3, verbose=0,
                      callbacks=[_Interrupt()])
    (run_dir,) = tmp_path.glob("run_*")
    assert [r["epoch"] for r in _log(run_dir)] == ["0", "1"]
    assert not (run_dir / "final_model.keras").exists()
    # A kill between the log row and the backup leaves a row for an epoch that will run again.
    with open(run_dir / "training_log.csv", "a", newline="") as f:
        f.write("2" + ",0.5" * (len(_log(run_dir)[0]) - 1) + "\n")

    assert trainer.train(resume=run_dir, verbose=0) == run_dir
    resumed = _log(run_dir)
    assert [r["epoch"] for r in resumed] == ["0", "1", "2"]
    # Same weights, optimizer, dropout state and augmentation: same numbers as without a stop.
    whole = _log(trainer.train(data_dir, tmp_path / "whole", profile="smoke", epochs=3, verbose=0))
    for key in ("loss", "val_loss", "learning_rate"):
        assert [float(r[key]) for r in resumed] == pytest.approx([float(r[key]) for r in whole],
                                                                 rel=1e-5)
    for name in ARTIFACTS:
        assert (run_dir / name).is_file(), name
    assert io.load_json(run_dir / "test_metrics.json")["training"]["resumed_at_epoch"] == 2
    assert len(list(tmp_path.glob("run_*"))) == 1  # no new folder for the resumed run

    with pytest.raises(LungsegInputError, match="finished"):
        trainer.train(resume=run_dir)


def test_resume_refuses_new_settings(data_dir, tmp_path):
    run_dir = tmp_path / "run_x"
    run_dir.mkdir()
    io.save_json({"settings": {}, "data_dir": str(data_dir)}, run_dir / "train_config.json")
    with pytest.raises(LungsegInputError, match="keeps its settings"):
        trainer.train(resume=run_dir, base_filters=8)


def test_dice_iou_numpy():
    import numpy as np

    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[:1] = True
    assert trainer.dice_iou(a, b) == pytest.approx((2 * 16 / 48, 16 / 32))
    assert trainer.dice_iou(b & False, b & False) == (1.0, 1.0)
