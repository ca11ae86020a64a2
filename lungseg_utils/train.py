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

from . import config, dataio
from .config import import_keras_quietly
from .errors import LungsegInputError, LungsegWarning, run_command

keras = import_keras_quietly()
# The modules below use Keras: imported after it, quietly.
from . import augment, dataset, storage, synthetic, unet  # noqa: E402
from .callbacks import (  # noqa: E402
    EpochSummary, SeedStateBackup, cosine_schedule, plan_budget, plan_epochs)
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
        split = dataio.load_json(split)
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


def _new_run(data_dir, out_dir, profile, split, deterministic, command, overrides):
    """Settings, split and a new run folder (with split.json) for a fresh run."""
    settings = config.get_profile(profile, **overrides)
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    found = dataio.discover_cases(data_dir)
    if settings.get("max_cases"):
        found = found[: int(settings["max_cases"])]
    folders = {p.name: p for p in found}
    if split is None:
        split = dataio.make_split(list(folders), settings["val_fraction"],
                              settings["test_fraction"], settings["seed"])
    split = _read_split(split, list(folders))
    run_dir = config.new_run_dir(Path(out_dir) if out_dir else None)
    dataio.save_json(split, run_dir / "split.json")
    runstate.fault("after_split")
    used = split["train"] + split["val"] + split["test"]
    cfg = {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": dataio.portable_path(run_dir), "data_dir": dataio.portable_path(data_dir),
        "profile": settings["profile"], "settings": settings, "deterministic": deterministic,
        "augment": {k: settings[k] for k in augment.AUGMENT_DEFAULTS},
        "versions": config.package_versions(), "split": split,
        "input_files": {f"{cid}/{name}": dataio.file_sha256(folders[cid] / name)
                        for cid in used for name in (dataio.CT_NAME, dataio.MASK_NAME)},
        "command": command,
    }
    return run_dir, settings, split, folders, cfg


def _resumed_run(run_dir, data_dir, profile, split, overrides):
    """Settings, split and case folders of an interrupted run, checked for changes."""
    run_dir = Path(run_dir)
    runstate.check_resumable(run_dir)
    runstate.clean_temporary(run_dir)
    cfg = dataio.load_json(run_dir / "train_config.json")
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
    folders = {p.name: p for p in dataio.discover_cases(data_dir)}
    for rel, digest in cfg.get("input_files", {}).items():
        path = data_dir / rel
        if not path.exists() or dataio.file_sha256(path) != digest:
            warnings.warn(f"{path}: differs from the file this run started with.",
                          LungsegWarning, stacklevel=3)
    return run_dir, settings, dataio.load_json(run_dir / "split.json"), folders, cfg



def make_datasets(settings: dict, split: dict, folders: dict, strategy=None,
                  initial_epoch: int = 0):
    """The training and validation ``PyDataset`` s of a run (:mod:`lungseg_utils.dataset`):
    augmented, seeded samples of the training cases; the validation cases as they are."""
    seed, batch = int(settings["seed"]), int(settings["batch_size"])
    common = dict(workers=int(settings.get("workers") or 1), use_multiprocessing=False)
    train_ds = dataset.LungDataset([folders[c] for c in split["train"]], batch, settings,
                                   seed=seed, augment=True, epoch=initial_epoch,
                                   samples_per_epoch=settings.get("samples_per_epoch"),
                                   endless=True, **common)
    val_batches = replica_batches(strategy, batch, train_ds.samples_per_epoch,
                                  len(split["val"]))
    val_ds = dataset.LungDataset([folders[c] for c in split["val"]], settings=settings,
                                 seed=seed, augment=False, **val_batches)
    return train_ds, val_ds


def build_model(settings: dict, strategy=None):
    """The network of ``settings`` (:func:`lungseg_utils.unet.build_from_settings`),
    compiled with its loss and learning rate (:func:`lungseg_utils.unet.compile_model`)."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return unet.compile_model(unet.build_from_settings(settings), settings["loss"],
                                  settings["learning_rate"])


def make_callbacks(settings: dict, run_dir: Path, best_val_loss=None, budget=None,
                   extra=()) -> list:
    """The callbacks of a run, as a plain list: the learning-rate schedule, the checkpoint
    and early stopping (``checkpoint="best"`` only), the CSV log, the backups that make a
    killed run resumable, the wall-clock budget (if any) and ``extra``."""
    if settings.get("lr_schedule") == "cosine":
        schedule = keras.callbacks.LearningRateScheduler(cosine_schedule(
            settings["learning_rate"], settings["epochs"],
            warmup_epochs=int(settings.get("warmup_epochs") or 0)))
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, min_lr=1e-6,
            patience=int(settings["reduce_lr_patience"]))
    callbacks = [schedule]
    if settings.get("checkpoint", "best") == "best":
        callbacks += [
            keras.callbacks.ModelCheckpoint(run_dir / "best_model.keras", monitor="val_loss",
                                            save_best_only=True,
                                            initial_value_threshold=best_val_loss),
            keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=False,
                                          patience=int(settings["early_stop_patience"]))]
    callbacks += [
        keras.callbacks.CSVLogger(run_dir / LOG_NAME, append=True),
        # Last of the run's own: once it records an epoch, the epoch's log row and
        # checkpoint are on disk.
        SeedStateBackup(run_dir / BACKUP_DIR),
        keras.callbacks.BackupAndRestore(run_dir / BACKUP_DIR, double_checkpoint=True,
                                         delete_checkpoint=False)]
    if budget is not None:
        callbacks.append(budget)
    return callbacks + list(extra)


def fit_model(model, train_ds, val_ds, settings: dict, callbacks: list, verbose=2):
    """``model.fit`` over the run's epochs: one pass of ``train_ds`` an epoch, ``val_ds``
    scored after each, ``callbacks`` called at every step of the way. Returns the History."""
    return model.fit(train_ds, validation_data=val_ds, epochs=int(settings["epochs"]),
                     steps_per_epoch=len(train_ds), callbacks=callbacks, verbose=verbose,
                     shuffle=False)


def save_models(model, run_dir: Path, settings: dict) -> Path:
    """Write ``final_model.keras`` (and, for ``checkpoint="last"``, ``best_model.keras``: the
    same weights), each without its optimizer and with float16 weights; returns the model
    file the run is scored and used by."""
    with dataio.atomic_write(run_dir / "final_model.keras", overwrite=True) as tmp:
        model.save(tmp)
        runstate.fault("mid_final_save")
    best_path = run_dir / "best_model.keras"
    if settings.get("checkpoint", "best") != "best":   # "last": the final weights are the model
        with dataio.atomic_write(best_path, overwrite=True) as tmp:
            shutil.copyfile(run_dir / "final_model.keras", tmp)
    for path in (best_path, run_dir / "final_model.keras"):
        storage.compact_model_file(path)    # no optimizer, float16 weights: 11 MB
    return best_path if best_path.exists() else run_dir / "final_model.keras"


def _open_run(data_dir, out_dir, profile, resume, split, deterministic, command, overrides):
    """A new run folder (settings, split, ``train_config.json``) or an interrupted one to
    resume: ``(run_dir, settings, split, folders, cfg, initial_epoch, best_val_loss)``."""
    if resume is not None:
        run_dir, settings, split, folders, cfg = _resumed_run(resume, data_dir, profile, split,
                                                              overrides)
        return (run_dir, settings, split, folders, cfg, *runstate.resume_state(run_dir))
    run_dir, settings, split, folders, cfg = _new_run(data_dir, out_dir, profile, split,
                                                      deterministic, command, overrides)
    dataio.save_json(cfg, run_dir / "train_config.json")   # resumable from here on
    return run_dir, settings, split, folders, cfg, 0, None


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
        Settings to start from (default ``$LUNGSEG_PROFILE`` or main); ``overrides`` (any
        profile key, e.g. ``epochs=3, base_filters=8``) replace single values.
    resume : path, optional
        The folder of an interrupted run: continue it from its last completed epoch with its
        own settings, split and data folder. Only ``epochs`` may be overridden.
    split : dict or path to a split.json, optional
        Use this split instead of a new seeded one (``dataio.make_split``).
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
    run_dir, settings, split, folders, cfg, initial_epoch, best_val_loss = _open_run(
        data_dir, out_dir, profile, resume, split, deterministic, command, overrides)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        config.set_seeds(int(settings["seed"]))
        _set_determinism(deterministic)
        cfg["precision"] = config.training_precision(settings.get("mixed_precision"))
        keras.mixed_precision.set_global_policy(cfg["precision"])
        strategy = distribution_strategy() if strategy is None else strategy
        model = build_model(settings, strategy)                                # 1. build
        if init_weights is not None and resume is None:
            _start_from(model, init_weights, cfg)
        train_ds, val_ds = make_datasets(settings, split, folders, strategy, initial_epoch)
        budget = None
        if resume is None:
            budget = plan_budget(settings, cfg, train_ds, len(split["val"]),
                                 verbose not in (0, "0"), t_start)
            cfg["model"] = {"name": model.name, "params": int(model.count_params()),
                            "forward_flops": unet.count_flops(model)}
            cfg["distribution"] = {
                "strategy": type(strategy).__name__ if strategy is not None else None,
                "replicas": int(getattr(strategy, "num_replicas_in_sync", 1))}
            dataio.save_json(cfg, run_dir / "train_config.json", overwrite=True)
        extra = [*([EpochSummary(settings["epochs"], max(1, int(settings["epochs"]) // 6))]
                   if verbose == "compact" else []), *(callbacks or []), *_fault_hook()]
        run_callbacks = make_callbacks(settings, run_dir, best_val_loss, budget, extra)
        try:                                                                   # 2. fit
            fit_model(model, train_ds, val_ds, settings, run_callbacks, _verbose(verbose))
        except BaseException:
            print(f"\nTraining stopped early; continue it with:\n  python -m lungseg_utils.train "
                  f"--resume {run_dir}", file=sys.stderr)
            raise
        model_path = save_models(model, run_dir, settings)                     # 3. save
        runstate.fault("before_test_metrics")
        metrics = evaluate_cases(keras.saving.load_model(model_path),          # 4. score
                                 [folders[c] for c in split["test"]],
                                 settings.get("hu_window", config.HU_WINDOW))
        metrics["model"] = model_path.name
        metrics["training"] = {"wall_s_this_session": round(time.perf_counter() - t_start, 1),
                               "resumed_at_epoch": initial_epoch if resume else None,
                               "epochs_planned": int(settings["epochs"]),
                               "stopped_by_budget_after_epoch": budget and budget.stopped_epoch}
        dataio.save_json(metrics, run_dir / "test_metrics.json", overwrite=True)
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return run_dir


def _start_from(model, init_weights, cfg: dict) -> None:
    """Fine-tuning: set the weights of ``init_weights`` (the same network); recorded in cfg."""
    try:
        model.set_weights(keras.saving.load_model(init_weights, compile=False).get_weights())
    except (OSError, ValueError) as exc:
        raise LungsegInputError(f"{init_weights}: cannot start from it ({exc}).") from None
    cfg["init_weights"] = {"file": dataio.portable_path(init_weights),
                           "sha256": dataio.file_sha256(init_weights)}


def _fault_hook() -> list:
    """A callback that kills the process at an epoch's end when the tests ask (runstate)."""
    if not os.environ.get("LUNGSEG_FAULT_AT"):
        return []
    return [keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: runstate.fault(f"epoch_end:{epoch}"))]



# --------------------------------------------------------------------------- command line


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.train",
        description="Train the 3D U-Net on 64^3 lung CT cases, one model. It writes a new run "
                    "folder (results/models/run_YYYYMMDD-HHMMSS/); unset options take the "
                    "profile's value.")
    p.add_argument("--profile", choices=sorted(config.PROFILES),
                   help="settings to start from (default: $LUNGSEG_PROFILE or "
                        f"{config.DEFAULT_PROFILE})")
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
    p.add_argument("--loss", choices=sorted(unet.LOSSES),
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


def run(args) -> int:
    """The train command on parsed ``args`` (:func:`build_parser`); bad input raises."""
    args = dict(vars(args))
    fixed = {k: args.pop(k, None) for k in ("data_dir", "out_dir", "profile", "resume",
                                            "verbose", "command")}
    overrides = {k: v for k, v in args.items() if v is not None}
    run_dir = train(**fixed, **overrides)
    metrics = dataio.load_json(run_dir / "test_metrics.json")
    print(f"Run folder: {run_dir}")
    if metrics["mean_dice"] is not None:
        print(f"Test Dice {metrics['mean_dice']:.4f}, IoU {metrics['mean_iou']:.4f} "
              f"over {metrics['n_cases']} case(s) ({metrics['model']}).")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.train`` (``lungseg train``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
