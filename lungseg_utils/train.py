"""Train the 3D U-Net: one function, :func:`train`, and its command line.

``python -m lungseg_utils.train --profile quick`` writes a new folder
``results/models/run_YYYYMMDD-HHMMSS/`` (or one under ``--out_dir``) holding::

    split.json          the seeded patient-level split (train / val / test)
    train_config.json   every setting, package versions, SHA-256 of each input file, the split
    training_log.csv    one row per epoch: loss, dice, iou, val_*, learning_rate
    best_model.keras    the epoch with the lowest val_loss
    final_model.keras   the last epoch
    test_metrics.json   Dice and IoU of each test case (threshold 0.5) and their means
    backup/             BackupAndRestore's state while training runs (removed at the end)

A run killed mid-way continues where it stopped with ``--resume RUN_DIR`` (same folder,
same split, same settings); no run folder is ever overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import config, io
from .config import import_keras_quietly
from .errors import LungsegInputError, LungsegWarning

keras = import_keras_quietly()
# The modules below use Keras: imported after it, quietly.
from . import dataset, storage, synthetic, unet  # noqa: E402
from .callbacks import EpochSummary, SeedStateBackup, WallClockBudget, cosine_schedule  # noqa: E402
from .distribute import distribution_strategy, replica_batches  # noqa: E402,F401
from .metrics import dice, iou  # noqa: E402

from .runstate import BACKUP_DIR, LOG_NAME, RUN_ARTIFACTS  # noqa: E402,F401  (re-exported)
from . import runstate  # noqa: E402


def _set_determinism(enabled: bool) -> bool:
    """Ask TensorFlow for deterministic ops (no-op under other backends). Returns the state."""
    if not enabled or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return True


def _verbose(verbose):
    """Keras's verbosity for ``verbose``: None/"auto" a bar on a terminal, else a line an
    epoch; "compact" none (:class:`EpochSummary` prints a few lines instead)."""
    if verbose == "compact":
        return 0
    return (1 if sys.stdout.isatty() else 2) if verbose in (None, "auto") else int(verbose)


def _read_split(split, case_ids) -> dict:
    if isinstance(split, (str, Path)):
        split = io.load_json(split)
    missing = sorted(set(split["train"] + split["val"] + split["test"]) - set(case_ids))
    if missing:
        raise LungsegInputError(f"split: case(s) {missing} are not in the data folder.")
    if not split["train"] or not split["val"]:
        raise LungsegInputError("split: needs at least one training and one validation case.")
    return {"seed": split.get("seed"), "train": list(split["train"]), "val": list(split["val"]),
            "test": list(split.get("test", []))}


def evaluate_cases(model, folders, hu_window=config.HU_WINDOW, threshold: float = 0.5) -> dict:
    """Predict each case folder, threshold at ``threshold``, and score it with NumPy."""
    rows = []
    if folders:
        x, y = dataset.load_training_arrays(folders, hu_window)
        for folder, xi, yi in zip(folders, x, y):
            pred = np.asarray(model.predict_on_batch(xi[None]))[0, ..., 0] > threshold
            rows.append({"case_id": Path(folder).name, "dice": dice(pred, yi[..., 0] > 0.5),
                         "iou": iou(pred, yi[..., 0] > 0.5)})
    mean = (lambda k: float(np.mean([r[k] for r in rows])) if rows else None)
    return {"threshold": threshold, "cases": rows, "mean_dice": mean("dice"),
            "mean_iou": mean("iou"), "n_cases": len(rows)}


# --------------------------------------------------------------------------- training


def _portable(path) -> str:
    """A path relative to the repository when it can be (so run folders travel), else absolute."""
    path = Path(path).resolve()
    try:
        return os.path.relpath(path, config.REPO_ROOT)
    except ValueError:
        return str(path)


def _new_run(data_dir, out_dir, profile, split, deterministic, command, overrides):
    """Settings, split and a new run folder (with split.json) for a fresh run."""
    settings = config.get_profile(profile, **overrides)
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    found = io.discover_cases(data_dir)
    if settings.get("max_cases"):
        found = found[: int(settings["max_cases"])]
    folders = {p.name: p for p in found}
    if split is None:
        split = io.make_split(list(folders), settings["val_fraction"],
                              settings["test_fraction"], settings["seed"])
    split = _read_split(split, list(folders))
    run_dir = config.new_run_dir(Path(out_dir) if out_dir else None)
    io.save_json(split, run_dir / "split.json")
    runstate.fault("after_split")
    used = split["train"] + split["val"] + split["test"]
    cfg = {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": _portable(run_dir), "data_dir": _portable(data_dir),
        "profile": settings["profile"], "settings": settings, "deterministic": deterministic,
        "augment": {k: settings[k] for k in config.AUGMENT_DEFAULTS},
        "versions": config.package_versions(), "split": split,
        "input_files": {f"{cid}/{name}": io.file_sha256(folders[cid] / name)
                        for cid in used for name in (io.CT_NAME, io.MASK_NAME)},
        "command": command,
    }
    return run_dir, settings, split, folders, cfg


def _resumed_run(run_dir, data_dir, profile, split, overrides):
    """Settings, split and case folders of an interrupted run, checked for changes."""
    run_dir = Path(run_dir)
    runstate.check_resumable(run_dir)
    runstate.clean_temporary(run_dir)
    cfg = io.load_json(run_dir / "train_config.json")
    extra = sorted(k for k, v in overrides.items() if v is not None and k != "epochs")
    extra += ["profile"] * bool(profile) + ["split"] * (split is not None)
    if extra:
        raise LungsegInputError(
            f"resume={run_dir}: a resumed run keeps its settings; only epochs may change "
            f"(got {extra}).")
    settings = dict(cfg["settings"])
    if overrides.get("epochs"):
        settings["epochs"] = int(overrides["epochs"])
    data_dir = Path(data_dir) if data_dir else config.REPO_ROOT / cfg["data_dir"]
    folders = {p.name: p for p in io.discover_cases(data_dir)}
    for rel, digest in cfg.get("input_files", {}).items():
        path = data_dir / rel
        if not path.exists() or io.file_sha256(path) != digest:
            warnings.warn(f"{path}: differs from the file this run started with.",
                          LungsegWarning, stacklevel=3)
    return run_dir, settings, io.load_json(run_dir / "split.json"), folders, cfg



def plan_epochs(settings: dict, train_ds, n_val: int, elapsed_s: float = 0.0,
                n_steps: int = 3) -> dict:
    """Time a few training steps on this machine and plan the run's epochs.

    A throwaway model with the run's settings takes one step (tracing) and ``n_steps`` timed
    steps on the run's first batches. An epoch is its steps, the validation cases (a third
    of a step each) and 0.6 s of bookkeeping. With ``settings["budget_min"]``: as many
    epochs as fit in the budget (less ``elapsed_s``, the real model's tracing, as long as the
    probe's, and a reserve for saving and scoring), at least one; else the profile's.

    Returns ``{"step_s", "epoch_s", "epochs_profile", "epochs", "budget_min", "reserve_s",
    "message"}`` (seconds; the message says what the profile costs on this machine).
    """
    probe = unet.compile_model(unet.build_from_settings(settings), settings["loss"],
                               settings["learning_rate"])
    times = []
    for i in range(n_steps + 1):
        x, y = train_ds[i]
        t0 = time.perf_counter()
        probe.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))
    epoch_s = len(train_ds) * step_s + n_val * step_s / 3.0 + 0.6
    wanted, budget = int(settings["epochs"]), settings.get("budget_min")
    reserve_s = 15.0 + 2.0 * step_s
    epochs = wanted
    if budget:
        trace_s = max(times[0] - step_s, 0.0)
        epochs = int((60.0 * float(budget) - elapsed_s - trace_s - reserve_s) // epoch_s)
        epochs = max(1, min(wanted, epochs))
    message = (f"This machine: {step_s:.2f} s a training step (batch {train_ds.batch_size}), "
               f"about {epoch_s:.1f} s an epoch; the profile's {wanted} epochs take about "
               f"{wanted * epoch_s / 60.0:.0f} min.")
    if budget:
        message += f" Budget {float(budget):g} min: {epochs} epochs planned."
    return {"step_s": step_s, "epoch_s": epoch_s, "epochs_profile": wanted, "epochs": epochs,
            "budget_min": budget, "reserve_s": reserve_s, "message": message}


def train(data_dir=None, out_dir=None, profile=None, resume=None, split=None, *,
          verbose=None, callbacks=None, deterministic: bool = True, strategy=None,
          command=None, init_weights=None, **overrides) -> Path:
    """Train one model and write its run folder; returns the folder.

    Parameters
    ----------
    data_dir : path, optional
        Folder of ``patient_XXX/{ct,lung}.nii.gz`` on the 64^3 model grid
        (default :func:`lungseg_utils.synthetic.resolve_data_dir`).
    out_dir : path, optional
        Where the new ``run_YYYYMMDD-HHMMSS`` folder goes (default ``results/models``).
    profile : {'smoke', 'quick', 'full'}, optional
        Settings to start from (default ``$LUNGSEG_PROFILE`` or quick); ``overrides`` (any
        profile key, e.g. ``epochs=3, base_filters=8``) replace single values.
    resume : path, optional
        The folder of an interrupted run: continue it from its last completed epoch with its
        own settings, split and data folder. Only ``epochs`` may be overridden.
    split : dict or path to a split.json, optional
        Use this split instead of a new seeded one (``io.make_split``).
    verbose : 0, 1, 2, "compact" or None
        Keras progress output; None: a bar of steps in a terminal (1), one line per epoch
        otherwise (2, for logs); "compact": about six lines a run (notebooks).
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks, called after the run's own.
    deterministic : bool
        Ask TensorFlow for deterministic ops (measured: at most ~3 % slower a step on CPU).
    strategy : tf.distribute.Strategy, optional
        Build and compile the model under this strategy's scope (default:
        :func:`distribution_strategy`, i.e. one device, or all GPUs if several are visible).
        ``batch_size`` is the global batch, split among the replicas.
    command : list of str, optional
        The command line that started the run, recorded in ``train_config.json``.
    init_weights : path to a ``.keras`` file, optional
        Start from this model's weights (same network) instead of a random initialisation:
        fine-tuning. Its path and SHA-256 are recorded in ``train_config.json``.
    """
    t_start = time.perf_counter()
    if resume is not None:
        run_dir, settings, split, folders, cfg = _resumed_run(resume, data_dir, profile, split,
                                                              overrides)
        initial_epoch, best_val_loss = runstate.resume_state(run_dir)
    else:
        run_dir, settings, split, folders, cfg = _new_run(data_dir, out_dir, profile, split,
                                                          deterministic, command, overrides)
        io.save_json(cfg, run_dir / "train_config.json")   # resumable from here on
        initial_epoch, best_val_loss = 0, None

    seed = int(settings["seed"])
    previous_policy = keras.mixed_precision.global_policy()
    try:
        config.set_seeds(seed)
        _set_determinism(deterministic)
        if settings.get("mixed_precision"):
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        strategy = distribution_strategy() if strategy is None else strategy
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = unet.compile_model(unet.build_from_settings(settings), settings["loss"],
                                       settings["learning_rate"])
        if init_weights is not None and resume is None:        # fine-tuning: the same network
            try:
                model.set_weights(keras.saving.load_model(init_weights, compile=False).get_weights())
            except (OSError, ValueError) as exc:
                raise LungsegInputError(f"{init_weights}: cannot start from it ({exc}).") from None
            cfg["init_weights"] = {"file": _portable(init_weights),
                                   "sha256": io.file_sha256(init_weights)}
        batch = int(settings["batch_size"])
        common = dict(workers=int(settings.get("workers") or 1), use_multiprocessing=False)
        train_ds = dataset.LungDataset([folders[c] for c in split["train"]], batch, settings,
                                       seed=seed, augment=True, epoch=initial_epoch,
                                       samples_per_epoch=settings.get("samples_per_epoch"),
                                       endless=True, **common)
        val_batches = replica_batches(strategy, batch, train_ds.samples_per_epoch,
                                       len(split["val"]))
        val_ds = dataset.LungDataset([folders[c] for c in split["val"]], settings=settings,
                                     seed=seed, augment=False, **val_batches)
        if resume is None:
            if settings.get("budget_min") or _verbose(verbose) or verbose == "compact":
                cfg["plan"] = plan_epochs(settings, train_ds, len(split["val"]),
                                          time.perf_counter() - t_start)
                settings["epochs"] = cfg["settings"]["epochs"] = cfg["plan"]["epochs"]
                print(cfg["plan"]["message"])
            cfg["model"] = {"name": model.name, "params": int(model.count_params()),
                            "forward_flops": unet.count_flops(model)}
            cfg["distribution"] = {
                "strategy": type(strategy).__name__ if strategy is not None else None,
                "replicas": int(getattr(strategy, "num_replicas_in_sync", 1))}
            io.save_json(cfg, run_dir / "train_config.json", overwrite=True)
        budget = None
        if resume is None and settings.get("budget_min"):
            budget = WallClockBudget(t_start + 60.0 * float(settings["budget_min"]),
                                     cfg["plan"]["reserve_s"], cfg["plan"]["epoch_s"])
        if settings.get("lr_schedule") == "cosine":
            lr_callback = keras.callbacks.LearningRateScheduler(
                cosine_schedule(settings["learning_rate"], settings["epochs"]))
        else:
            lr_callback = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, min_lr=1e-6,
                patience=int(settings["reduce_lr_patience"]))
        by_val = settings.get("checkpoint", "best") == "best"
        run_callbacks = [
            lr_callback,
            *([keras.callbacks.ModelCheckpoint(run_dir / "best_model.keras", monitor="val_loss",
                                               save_best_only=True,
                                               initial_value_threshold=best_val_loss),
               keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=False,
                                             patience=int(settings["early_stop_patience"]))]
              if by_val else []),
            keras.callbacks.CSVLogger(run_dir / LOG_NAME, append=True),
            # Last of the run's own: once it records an epoch, the epoch's log row and
            # checkpoint are on disk.
            SeedStateBackup(run_dir / BACKUP_DIR),
            keras.callbacks.BackupAndRestore(run_dir / BACKUP_DIR, double_checkpoint=True,
                                             delete_checkpoint=False),
            *([budget] if budget else []),
            *([EpochSummary(settings["epochs"], max(1, int(settings["epochs"]) // 6))]
              if verbose == "compact" else []),
            *(callbacks or []),
            *([keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: runstate.fault(f"epoch_end:{epoch}"))]
              if os.environ.get("LUNGSEG_FAULT_AT") else []),      # test hook, see runstate
        ]
        try:
            model.fit(train_ds, validation_data=val_ds, epochs=int(settings["epochs"]),
                      steps_per_epoch=len(train_ds),
                      callbacks=run_callbacks, verbose=_verbose(verbose), shuffle=False)
        except BaseException:
            print(f"\nTraining stopped early; continue it with:\n  python -m lungseg_utils.train "
                  f"--resume {run_dir}", file=sys.stderr)
            raise
        with io.atomic_write(run_dir / "final_model.keras", overwrite=True) as tmp:
            model.save(tmp)
            runstate.fault("mid_final_save")
        best_path = run_dir / "best_model.keras"
        if not by_val:                  # checkpoint "last": the final weights are the model
            with io.atomic_write(best_path, overwrite=True) as tmp:
                shutil.copyfile(run_dir / "final_model.keras", tmp)
        for path in (best_path, run_dir / "final_model.keras"):
            storage.compact_model_file(path)    # no optimizer, float16 weights: 11 MB
        runstate.fault("before_test_metrics")
        scored = keras.saving.load_model(best_path) if best_path.exists() else model
        metrics = evaluate_cases(scored, [folders[c] for c in split["test"]],
                                 settings.get("hu_window", config.HU_WINDOW))
        metrics["model"] = best_path.name if best_path.exists() else "final_model.keras"
        metrics["training"] = {"wall_s_this_session": round(time.perf_counter() - t_start, 1),
                               "resumed_at_epoch": initial_epoch if resume else None,
                               "epochs_planned": int(settings["epochs"]),
                               "stopped_by_budget_after_epoch": budget and budget.stopped_epoch}
        io.save_json(metrics, run_dir / "test_metrics.json", overwrite=True)
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return run_dir



# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lungseg_utils.train",
        description="Train the 3D U-Net on 64^3 lung CT cases and write a new run folder "
                    "(results/models/run_YYYYMMDD-HHMMSS/). Unset options take the profile's "
                    "value.")
    p.add_argument("--profile", choices=sorted(config.PROFILES),
                   help="settings to start from (default: $LUNGSEG_PROFILE or quick)")
    p.add_argument("--data_dir", help="folder of patient_XXX/{ct,lung}.nii.gz (default: found)")
    p.add_argument("--out_dir", help="where the new run folder goes (default: results/models)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run in its own folder, with its settings")
    p.add_argument("--base_filters", type=int, help="filters of the first level (doubling below)")
    p.add_argument("--reg_l2", type=float, help="L2 factor on every convolution kernel")
    p.add_argument("--dropout_enc", type=float, help="dropout after each encoder block")
    p.add_argument("--dropout_dec", type=float, help="dropout after each decoder block")
    p.add_argument("--dropout_bot", type=float, help="dropout after the bottleneck")
    p.add_argument("--epochs", type=int, help="maximum number of epochs")
    p.add_argument("--batch_size", type=int, help="volumes per training step")
    p.add_argument("--samples_per_epoch", type=int, help="augmented samples per epoch")
    p.add_argument("--p_jitter", type=float, help="probability of intensity jitter per sample")
    p.add_argument("--jitter_sigma", type=float, help="std of the jitter on the [0, 1] CT")
    p.add_argument("--seed", type=int, help="seed of the split, the weights and augmentation")
    p.add_argument("--use_transpose", action="store_true", default=None,
                   help="up-sample with Conv3DTranspose instead of UpSampling3D + 1x1 conv")
    p.add_argument("--loss", choices=["dice", "hybrid"],
                   help="soft Dice, or 0.5 Dice + 0.5 binary cross-entropy")
    p.add_argument("--budget_min", type=float,
                   help="wall-clock budget in minutes: time a few steps, plan the epochs that fit, "
                        "stop gracefully before the budget ends")
    p.add_argument("--lr_schedule", choices=["plateau", "cosine"],
                   help="halve the rate on a val_loss plateau, or a cosine decay over the "
                        "planned epochs")
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="best_model.keras: the epoch with the lowest val_loss (with early "
                        "stopping), or the last epoch's weights (validation only logged)")
    p.add_argument("--mixed_precision", action="store_true", default=None, help="bfloat16")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2],
                   help="0 silent, 1 progress bar of steps, 2 one line per epoch "
                        "(default: 1 in a terminal, else 2)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser().parse_args(argv))
    fixed = {k: args.pop(k) for k in ("data_dir", "out_dir", "profile", "resume", "verbose")}
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        run_dir = train(**fixed, command=["python", "-m", "lungseg_utils.train", *argv],
                        **overrides)
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = io.load_json(run_dir / "test_metrics.json")
    print(f"Run folder: {run_dir}")
    if metrics["mean_dice"] is not None:
        print(f"Test Dice {metrics['mean_dice']:.4f}, IoU {metrics['mean_iou']:.4f} "
              f"over {metrics['n_cases']} case(s) ({metrics['model']}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
