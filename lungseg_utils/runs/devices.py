"""Where a training run runs: one device, or mirrored over several (``tf.distribute``).

:func:`lungseg_utils.runs.training.train_run` builds and compiles the model under the
strategy that :func:`distribution_strategy` returns, and sizes the validation batches with
:func:`replica_batches` so that no replica ever gets an empty share of a batch.
"""

from __future__ import annotations

from ..config import import_keras_quietly
from ..errors import LungsegInputError

keras = import_keras_quietly()


def distribution_strategy(devices=None):
    """The ``tf.distribute`` strategy that a run builds and trains the model under.

    Parameters
    ----------
    devices : list of str, optional
        Devices to mirror the model on, e.g. ``["/gpu:0", "/gpu:1"]``, or two logical CPUs
        ``["/cpu:0", "/cpu:1"]`` in a test. None: ``MirroredStrategy`` over all GPUs when
        more than one is visible, else TensorFlow's default one-device strategy.

    Returns
    -------
    tf.distribute.Strategy, or None under a Keras backend other than TensorFlow (which
    distributes with ``keras.distribution`` instead). For several machines see
    ``benchmarks/README.md`` (``MultiWorkerMirroredStrategy`` with ``TF_CONFIG``).
    """
    if keras.backend.backend() != "tensorflow":
        if devices:
            raise LungsegInputError("distribution_strategy: devices need the TensorFlow backend.")
        return None
    import tensorflow as tf

    if devices is None:
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices=list(devices))


def replica_batches(strategy, batch: int, samples: int, n_val: int) -> dict:
    """Batch arguments of the validation set, checking that no replica gets an empty batch.

    TensorFlow fails on a replica's empty share of a batch, so with R > 1 replicas the
    global ``batch`` must be a multiple of R and the epoch's ``samples`` a multiple of
    ``batch``; validation runs in batches of R with each case repeated R times (its mean
    is unchanged). With one replica: ``batch`` and one pass over the cases.
    """
    replicas = int(getattr(strategy, "num_replicas_in_sync", 1))
    if replicas == 1:
        return {"batch_size": batch}
    if batch % replicas or samples % batch:
        raise LungsegInputError(
            f"strategy with {replicas} replicas: batch_size={batch} must be a multiple of "
            f"{replicas} and samples_per_epoch={samples} a multiple of batch_size.")
    return {"batch_size": replicas, "samples_per_epoch": n_val * replicas}


def strategy_record(strategy) -> dict:
    """What ``train_config.json`` records of the strategy: its class and its replicas."""
    return {"strategy": type(strategy).__name__ if strategy is not None else None,
            "replicas": int(getattr(strategy, "num_replicas_in_sync", 1))}
