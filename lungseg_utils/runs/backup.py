"""The callbacks that keep a training run resumable, and the kill tests' callback.

Keras's ``BackupAndRestore`` saves the weights, the optimizer and the epoch into the run's
``backup/`` folder after every epoch and restores them when a killed run starts again;
:class:`SeedStateBackup` saves the dropout layers' random state beside it, so that a resumed
run repeats the numbers of one that was never stopped. :func:`fault_hook` kills the process
at an epoch's end when the tests ask (:func:`lungseg_utils.runs.state.fault`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .. import dataio
from ..config import import_keras_quietly
from ..errors import LungsegWarning
from . import state

keras = import_keras_quietly()


class SeedStateBackup(keras.callbacks.Callback):
    """Back up the random-number state of the Dropout layers beside BackupAndRestore's files.

    Keras does not save a ``SeedGenerator``'s state with the weights, so without this a
    resumed run would replay the dropout masks of its first epochs. Must come before
    ``BackupAndRestore`` in the callback list: the state is tagged with its epoch and only
    restored if that matches the epoch of the restored weights.
    """

    def __init__(self, backup_dir: Path):
        super().__init__()
        self.path = Path(backup_dir) / "seed_states.npz"
        self.meta = Path(backup_dir) / "training_metadata.json"

    def _generators(self):
        return [layer.seed_generator for layer in self.model.layers
                if getattr(layer, "seed_generator", None) is not None]

    def on_train_begin(self, logs=None):
        if not (self.path.exists() and self.meta.exists()):
            return
        saved = np.load(self.path)
        generators = self._generators()
        if int(saved["epoch"]) == int(dataio.load_json(self.meta)["epoch"]) and \
                len(generators) == len(saved.files) - 1:
            for i, sg in enumerate(generators):
                sg.state.assign(saved[f"s{i}"])
        else:
            warnings.warn(f"{self.path}: dropout state does not match the backup; not restored.",
                          LungsegWarning, stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        states = {f"s{i}": np.asarray(sg.state.numpy()) for i, sg in enumerate(self._generators())}
        with dataio.atomic_write(self.path, overwrite=True) as tmp:
            np.savez(tmp, epoch=epoch + 1, **states)


def backup_callbacks(run_dir) -> list:
    """:class:`SeedStateBackup` and ``BackupAndRestore`` in ``run_dir/backup``. They go after
    the core's callbacks (:func:`lungseg_utils.train.make_callbacks`): once they record an
    epoch, the epoch's log row and checkpoint are on disk."""
    folder = Path(run_dir) / state.BACKUP_DIR
    return [SeedStateBackup(folder),
            keras.callbacks.BackupAndRestore(folder, double_checkpoint=True,
                                             delete_checkpoint=False)]


def fault_hook() -> list:
    """A callback that kills the process at an epoch's end when the tests ask (none else)."""
    if not os.environ.get("LUNGSEG_FAULT_AT"):
        return []
    return [keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: state.fault(f"epoch_end:{epoch}"))]
