"""lungseg_utils.train and the train command (lungseg_utils.runs.training): the command line
writes every artifact, the same seed gives the same first epoch, a run killed mid-way resumes
to the numbers of an uninterrupted one, the test cases are scored as the metrics module
scores them, and the core's trainer refuses what only the command does.

Every run here is tiny (base 2 filters, depth 1, four 64^3 phantoms, batch 1) and the
uninterrupted reference is the session's shared ``smoke_run`` (tests/conftest.py).
"""

import numpy as np
import pytest

from lungseg_utils import config, dataset, dataio, metrics
from lungseg_utils import train as trainer
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.runs import budget, state, training

keras = trainer.keras


@pytest.fixture
def tiny_smoke_profile(monkeypatch):
    """The smoke profile with the tests' tiny network, for runs started from a command line
    (which has no --depth flag)."""
    monkeypatch.setitem(config.PROFILES, "smoke", {**config.PROFILES["smoke"], "depth": 1,
                                                   "base_filters": 2})


def test_command_line_writes_every_artifact(demo_data, tmp_path, capsys, tiny_smoke_profile,
                                            training_log):
    out = tmp_path / "runs"
    argv = ["--profile", "smoke", "--data_dir", str(demo_data), "--out_dir", str(out),
            "--verbose", "0"]
    assert training.main(argv) == 0
    stdout = capsys.readouterr().out
    (run_dir,) = out.glob("run_*")
    for name in trainer.RUN_ARTIFACTS:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / state.BACKUP_DIR).exists()
    assert f"Run folder: {run_dir}" in stdout and "Test Dice" in stdout

    cfg = dataio.load_json(run_dir / "train_config.json")
    split = dataio.load_json(run_dir / "split.json")
    assert cfg["command"] == ["python", "-m", "lungseg_utils.runs.training", *argv]
    assert cfg["split"] == split and cfg["settings"]["base_filters"] == 2
    assert cfg["settings"]["profile"] == "smoke" and cfg["settings"]["epochs"] == 1
    assert len(cfg["input_files"]) == 2 * 4 and cfg["versions"]["keras"] == keras.__version__
    assert cfg["model"]["params"] > 0 and cfg["distribution"]["replicas"] == 1
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == {
        p.name for p in dataio.discover_cases(demo_data)}

    rows = training_log(run_dir)
    assert len(rows) == 1
    assert {"epoch", "loss", "dice", "iou", "val_loss", "val_dice", "val_iou",
            "learning_rate"} <= set(rows[0])

    scores = dataio.load_json(run_dir / "test_metrics.json")
    assert [c["case_id"] for c in scores["cases"]] == split["test"]
    assert scores["mean_dice"] == pytest.approx(np.mean([c["dice"] for c in scores["cases"]]))
    assert scores["model"] == "best_model.keras" and scores["n_cases"] == len(split["test"])

    model = keras.saving.load_model(run_dir / "best_model.keras")   # safe mode, plain Keras
    assert model.output_shape == (None, 64, 64, 64, 1)
    assert getattr(model, "optimizer", None) is None                # stripped for inference
    x, y = dataset.load_training_arrays([demo_data / split["test"][0]])
    pred = np.asarray(model.predict_on_batch(x))[0, ..., 0] > 0.5
    assert scores["cases"][0]["dice"] == pytest.approx(metrics.dice(pred, y[0, ..., 0]))


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    assert training.main(["--profile", "smoke", "--data_dir", str(tmp_path / "none"),
                          "--out_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'none'}: data folder does not exist."]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        training.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data_dir", "--out_dir", "--base_filters", "--reg_l2", "--dropout_enc",
                 "--dropout_dec", "--dropout_bot", "--epochs", "--batch_size", "--p_jitter",
                 "--jitter_sigma", "--seed", "--use_transpose", "--loss", "--profile", "--resume"):
        assert flag in text
    assert "--cv" not in text and "--publish" not in text   # now python -m lungseg_utils.experiments


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1 of 2")


@pytest.fixture(scope="module")
def interrupted_run(demo_data, smoke_settings, tmp_path_factory):
    """A run of the train command with the shared run's settings, killed after its first
    epoch (of two)."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(KeyboardInterrupt):
        training.train_run(demo_data, out, verbose=0, callbacks=[_Interrupt()],
                           **smoke_settings)
    (run_dir,) = out.glob("run_*")
    return run_dir


def test_same_seed_same_split_and_first_epoch(smoke_run, interrupted_run, training_log):
    assert interrupted_run != smoke_run                         # a new folder each time
    assert dataio.load_json(interrupted_run / "split.json") == dataio.load_json(smoke_run / "split.json")
    first = [training_log(r)[0] for r in (smoke_run, interrupted_run)]
    for key in ("loss", "val_loss", "dice", "val_dice"):
        assert float(first[1][key]) == pytest.approx(float(first[0][key]), rel=1e-5), key


def test_resume_after_interruption(smoke_run, interrupted_run, training_log):
    run_dir = interrupted_run
    assert [r["epoch"] for r in training_log(run_dir)] == ["0"]
    assert not (run_dir / "final_model.keras").exists()
    assert (run_dir / state.BACKUP_DIR).is_dir()
    # A kill between the log row and the backup leaves a row for an epoch that will run again.
    with open(run_dir / "training_log.csv", "a", newline="") as f:
        f.write("1" + ",0.5" * (len(training_log(run_dir)[0]) - 1) + "\n")

    assert training.train_run(resume=run_dir, verbose=0) == run_dir
    resumed = training_log(run_dir)
    assert [r["epoch"] for r in resumed] == ["0", "1"]
    # Same weights, optimizer, dropout state and augmentation: same numbers as without a stop.
    whole = training_log(smoke_run)
    for key in ("loss", "val_loss", "learning_rate", "dice", "val_dice"):
        assert [float(r[key]) for r in resumed] == pytest.approx([float(r[key]) for r in whole],
                                                                 rel=1e-5), key
    for name in trainer.RUN_ARTIFACTS:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / state.BACKUP_DIR).exists()
    assert dataio.load_json(run_dir / "test_metrics.json")["training"]["resumed_at_epoch"] == 1
    assert len(list(run_dir.parent.glob("run_*"))) == 1  # no new folder for the resumed run

    with pytest.raises(LungsegInputError, match="finished"):
        training.train_run(resume=run_dir)


def test_resume_refuses_new_settings(demo_data, tmp_path):
    run_dir = tmp_path / "run_x"
    run_dir.mkdir()
    dataio.save_json({"settings": {}, "data_dir": str(demo_data)}, run_dir / "train_config.json")
    with pytest.raises(LungsegInputError, match="keeps its settings"):
        training.train_run(resume=run_dir, base_filters=8)
    with pytest.raises(LungsegInputError, match="keeps its settings"):
        training.train_run(resume=run_dir, profile="quick")


def test_the_core_trainer_refuses_what_only_the_command_does(demo_data, tmp_path):
    """train.train trains a new run from random weights: a budget, a resume, starting
    weights or a strategy are refused in one line before any folder is made, not ignored."""
    for option in ({"budget_min": 1.0}, {"resume": tmp_path}, {"init_weights": "m.keras"},
                   {"strategy": object()}):
        with pytest.raises(LungsegInputError, match="lungseg train") as err:
            trainer.train(demo_data, tmp_path / "runs", profile="smoke", **option)
        assert str(err.value).startswith(f"train: {next(iter(option))} ")
    assert not (tmp_path / "runs").exists()


def test_a_broken_test_case_is_refused_before_training_and_leaves_no_folder(demo_data, tmp_path):
    """Issue #27: a bad case (here the mask is a copy of the CT) was found only when the test
    case was scored, hours later; now every case the split uses is checked first, in one
    line, and the refused run leaves no half-made folder (the command: exit 2)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    test_case = dataio.make_split([p.name for p in dataio.discover_cases(data)],
                                  seed=config.get_profile("smoke")["seed"])["test"][0]
    case = dataio.load_case(data / test_case)
    dataio.save_nifti(case.ct_hu.astype(np.int16), case.affine,
                      data / test_case / dataio.MASK_NAME, overwrite=True)
    with pytest.raises(LungsegInputError, match=rf"{test_case}/lung\.nii\.gz: mask values are "
                                                "not labels .*copy of the CT"):
        trainer.train(data, tmp_path / "runs", profile="smoke", verbose=0)
    assert not (tmp_path / "runs").exists()
    assert training.main(["--profile", "smoke", "--data_dir", str(data), "--out_dir",
                          str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_split_must_name_cases_of_the_data_folder(demo_data, tmp_path):
    bad = {"train": ["synth_000"], "val": ["nobody"], "test": []}
    with pytest.raises(LungsegInputError, match="nobody"):
        trainer.train(demo_data, tmp_path, profile="smoke", split=bad, verbose=0)
    with pytest.raises(LungsegInputError, match="validation"):
        trainer.train(demo_data, tmp_path, profile="smoke", verbose=0,
                      split={"train": ["synth_000"], "val": [], "test": []})


class _Oracle:
    """A stand-in model whose prediction is a fixed function of the case's label."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def predict_on_batch(self, x):
        self.calls += 1
        return self.fn(x)


def test_evaluate_cases_scores_with_the_metrics_module(demo_data):
    folders = dataio.discover_cases(demo_data)[:2]
    _, y = dataset.load_training_arrays(folders)
    truth = iter(y)
    perfect = trainer.evaluate_cases(_Oracle(lambda x: 0.9 * next(truth)[None]), folders)
    assert [r["case_id"] for r in perfect["cases"]] == ["synth_000", "synth_001"]
    assert perfect["mean_dice"] == 1.0 and perfect["mean_iou"] == 1.0 and perfect["n_cases"] == 2
    half = iter(y)

    def upper_half(x):
        m = next(half)[None].copy()
        m[:, :32] = 0.0
        return m

    scored = trainer.evaluate_cases(_Oracle(upper_half), folders, threshold=0.5)
    for row, yi in zip(scored["cases"], y):
        pred = yi[..., 0] > 0.5
        pred[:32] = False
        assert row["dice"] == pytest.approx(metrics.dice(pred, yi[..., 0]))
        assert row["iou"] == pytest.approx(metrics.iou(pred, yi[..., 0]))
    # the threshold is strict: a probability equal to it is background
    at_threshold = trainer.evaluate_cases(_Oracle(lambda x: np.full(x.shape, 0.5, np.float32)),
                                          folders[:1])
    assert at_threshold["mean_dice"] == 0.0
    empty = trainer.evaluate_cases(_Oracle(lambda x: x), [])
    assert empty["n_cases"] == 0 and empty["mean_dice"] is None


def test_plan_epochs_fits_the_budget(monkeypatch):
    """plan_epochs on a fake clock: the first (tracing) step 5 s, the others 1 s."""
    clock = {"now": 0.0, "calls": 0}

    class Probe:
        def train_on_batch(self, x, y):
            clock["now"] += 5.0 if clock["calls"] == 0 else 1.0
            clock["calls"] += 1

    class Batches:
        batch_size = 2

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return np.zeros(1), np.zeros(1)

    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(budget.unet, "build_from_settings", lambda s: None)
    monkeypatch.setattr(budget.unet, "compile_model", lambda m, loss, lr: Probe())
    settings = config.get_profile("quick", budget_min=2.0)
    plan = budget.plan_epochs(settings, Batches(), n_val=3, elapsed_s=10.0)
    # a step 1 s; an epoch 6 steps + 3 validation cases at a third of a step + 0.6 s = 7.6 s;
    # reserve 15 + 2 steps = 17 s; (120 - 10 elapsed - 4 tracing - 17) // 7.6 = 11 epochs
    assert plan["step_s"] == 1.0 and plan["epoch_s"] == pytest.approx(7.6)
    assert plan["reserve_s"] == 17.0 and plan["epochs"] == 11 and plan["epochs_profile"] == 150
    assert "1.00 s a training step (batch 2)" in plan["message"]
    assert "Budget 2 min: 11 epochs planned." in plan["message"]
    clock["calls"] = 0
    assert budget.plan_epochs(config.get_profile("quick"), Batches(), 3)["epochs"] == 150
    clock["calls"] = 0
    tiny = budget.plan_epochs(config.get_profile("quick", budget_min=0.1), Batches(), 3)
    assert tiny["epochs"] == 1                                  # at least one epoch


def test_validating_less_often_logs_na_and_trains_the_same_model(demo_data, smoke_settings,
                                                                  tmp_path):
    """``validate_every`` and ``workers`` (issue #26: the recipe validates every 5th epoch and
    augments in two threads): validation chooses nothing under the last-weights rule and each
    batch is fixed by its index, so the weights are those of a run validated after every
    epoch with one worker, and the log says NA where there was no validation."""
    assert trainer.validation_epochs({"epochs": 10, "validate_every": 4}) == [1, 4, 8, 10]
    runs = [trainer.train(demo_data, tmp_path / str(every), verbose=0, **{
        **smoke_settings, "epochs": 3, "checkpoint": "last", "validate_every": every,
        "workers": workers}) for every, workers in ((1, 1), (3, 2))]
    rows = (runs[1] / trainer.LOG_NAME).read_text().splitlines()
    assert "val_dice" in rows[0] and len(rows) == 4
    assert [("NA" in r) for r in rows[1:]] == [False, True, False]
    assert "NA" not in (runs[0] / trainer.LOG_NAME).read_text()
    from lungseg_utils.report.values import read_training_log

    assert ["val_dice" in r for r in read_training_log(runs[1] / trainer.LOG_NAME)] == [
        True, False, True]
    same = [keras.saving.load_model(r / "final_model.keras", compile=False).get_weights()
            for r in runs]
    for a, b in zip(*same):
        np.testing.assert_array_equal(a, b)


def test_the_augmenting_threads_stay_a_batch_ahead(demo_data, smoke_settings, tmp_path,
                                                   monkeypatch):
    """With two workers, Keras keeps the batches its queue holds at an epoch's end for the
    next epoch: its default queue, longer than an epoch, made every epoch augment (and keep
    in memory) more batches than it trained on — about 20 MB more a 64^3 epoch; make all's
    kernel reached 6.9 GB. Counted here: the batches augmented over 3 epochs of 4 batches are
    those trained on, plus at most one a worker in flight and the two Keras reads to learn
    the batch's shape."""
    made, real = [], dataset.LungDataset.__getitem__

    def counted(self, index):
        made.extend([index] if self.augment else [])
        return real(self, index)

    monkeypatch.setattr(dataset.LungDataset, "__getitem__", counted)
    epochs, workers = 3, 2
    trainer.train(demo_data, tmp_path, verbose=0, **{**smoke_settings, "epochs": epochs,
                                                     "workers": workers, "samples_per_epoch": 4})
    trained = epochs * 4
    assert trained <= len(made) <= trained + workers + 2, len(made)
