"""One training run as ``lungseg train`` runs it: :func:`train_run` and the command line.

:func:`train_run` runs the core's steps (:mod:`lungseg_utils.train`: a new run folder, the
model, the data sets, the callbacks, ``fit``, the saved models, the test scores) with what
a long run adds: backups after every epoch, so that a run killed mid-way continues where it
stopped (``--resume RUN_DIR``: same folder, same split, same settings); a wall-clock budget
(``--budget_min``, :mod:`.budget`); fine-tuning from earlier weights; training under a
``tf.distribute`` strategy (:mod:`.devices`). ``python -m lungseg_utils.runs.training
--profile quick`` (``lungseg train``) writes a new folder ``results/models/run_YYYYMMDD-HHMMSS/``
(or one under ``--out_dir``) holding the core's run artifacts
(:data:`lungseg_utils.train.RUN_ARTIFACTS`) and, while it trains, ``backup/`` (the training
state, removed at the end); no run folder is ever overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

from .. import config, dataio, train, unet
from ..errors import LungsegInputError
from .command import run_command
from . import backup, budget, devices, state

keras = train.keras


def open_run(data_dir, out_dir, profile, resume, split, deterministic, command, overrides):
    """A new run folder (settings, split, ``train_config.json``) or an interrupted one to
    resume: ``(run_dir, settings, split, folders, cfg, initial_epoch, best_val_loss)``."""
    if resume is not None:
        return state.resumed_run(resume, data_dir, profile, split, overrides)
    run_dir, settings, split, folders, cfg = train.new_run(data_dir, out_dir, profile, split,
                                                           deterministic, command, overrides)
    state.fault("after_split")
    dataio.save_json(cfg, run_dir / "train_config.json")   # resumable from here on
    return run_dir, settings, split, folders, cfg, 0, None


def train_run(data_dir=None, out_dir=None, profile=None, resume=None, split=None, *,
              verbose=None, callbacks=None, deterministic: bool = True, strategy=None,
              command=None, init_weights=None, **overrides) -> Path:
    """Train one model and write its run folder; returns the folder.

    The parameters of :func:`lungseg_utils.train.train` (``data_dir``, ``out_dir``,
    ``profile``, ``split``, ``verbose``, ``callbacks``, ``deterministic``, and any profile
    key as an override, ``budget_min`` included), and:

    command : list of str, optional
        The command line that started the run, recorded in ``train_config.json``.
    resume : path, optional
        The folder of an interrupted run: continue it from its last completed epoch with its
        own settings, split and data folder. Only ``epochs`` may be overridden.
    strategy : tf.distribute.Strategy, optional
        Build and compile the model under this strategy's scope (default:
        :func:`~lungseg_utils.runs.devices.distribution_strategy`, i.e. one device, or all
        GPUs if several are visible). ``batch_size`` is the global batch, split among the
        replicas.
    init_weights : path to a ``.keras`` file, optional
        Start from this model's weights (same network) instead of a random initialisation:
        fine-tuning. Its path and SHA-256 are recorded in ``train_config.json``.

    A new run first times a few steps and says what its epochs cost here (unless
    ``verbose=0``); with ``budget_min`` it plans the epochs that fit and stops in time.
    """
    t_start = time.perf_counter()
    run_dir, settings, split, folders, cfg, initial_epoch, best_val_loss = open_run(
        data_dir, out_dir, profile, resume, split, deterministic, command, overrides)
    with train.run_session(settings, cfg, deterministic):
        strategy = devices.distribution_strategy() if strategy is None else strategy
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = train.build_model(settings)                                # 1. build
        if init_weights is not None and resume is None:
            start_from(model, init_weights, cfg)
        samples = int(settings.get("samples_per_epoch") or len(split["train"]))
        val_batches = devices.replica_batches(strategy, int(settings["batch_size"]), samples,
                                              len(split["val"]))
        train_ds, val_ds = train.make_datasets(settings, split, folders, initial_epoch,
                                               val_batches)
        stop = None
        if resume is None:
            stop = budget.plan_budget(settings, cfg, train_ds, len(split["val"]),
                                      verbose not in (0, "0"), t_start)
            cfg["model"] = train.model_record(model)
            cfg["distribution"] = devices.strategy_record(strategy)
            dataio.save_json(cfg, run_dir / "train_config.json", overwrite=True)
        keras_verbose, printers = train.progress(settings, verbose)
        # After the core's own: the backups (last of the run's own), the budget, the rest.
        extra = [*backup.backup_callbacks(run_dir), *([stop] if stop else []), *printers,
                 *(callbacks or []), *backup.fault_hook()]
        try:                                                                   # 2. fit
            train.fit_model(model, train_ds, val_ds, settings,
                            train.make_callbacks(settings, run_dir, best_val_loss, extra),
                            keras_verbose)
        except BaseException:
            print(f"\nTraining stopped early; continue it with:\n  python -m lungseg_utils "
                  f"train --resume {run_dir}", file=sys.stderr)
            raise
        model_path = train.save_models(model, run_dir, settings,              # 3. save
                                       on_written=lambda: state.fault("mid_final_save"))
        state.fault("before_test_metrics")
        train.score_run(model_path, run_dir, split, folders, settings,        # 4. score
                        wall_s_this_session=round(time.perf_counter() - t_start, 1),
                        resumed_at_epoch=initial_epoch if resume else None,
                        epochs_planned=int(settings["epochs"]),
                        stopped_by_budget_after_epoch=stop and stop.stopped_epoch)
        shutil.rmtree(run_dir / state.BACKUP_DIR, ignore_errors=True)
    return run_dir


def start_from(model, init_weights, cfg: dict) -> None:
    """Fine-tuning: set the weights of ``init_weights`` (the same network); recorded in cfg."""
    try:
        model.set_weights(keras.saving.load_model(init_weights, compile=False).get_weights())
    except (OSError, ValueError) as exc:
        raise LungsegInputError(f"{init_weights}: cannot start from it ({exc}).") from None
    cfg["init_weights"] = {"file": dataio.portable_path(init_weights),
                           "sha256": dataio.file_sha256(init_weights)}


# --------------------------------------------------------------------------- command line


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.runs.training",
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
    p.add_argument("--validate_every", type=int, metavar="N",
                   help="score the validation cases after every Nth epoch (and the first and "
                        "last; the main profile: 5); the model is the same")
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
    run_dir = train_run(**fixed, **overrides)
    metrics = dataio.load_json(run_dir / "test_metrics.json")
    print(f"Run folder: {run_dir}")
    if metrics["mean_dice"] is not None:
        print(f"Test Dice {metrics['mean_dice']:.4f}, IoU {metrics['mean_iou']:.4f} "
              f"over {metrics['n_cases']} case(s) ({metrics['model']}).")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.runs.training`` (``lungseg train``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
