"""The ensemble as one network and its members' weights: a scan at the warm speed.

:func:`lungseg_utils.inference.load_model` builds every member of an ensemble as a Keras
model of its own, and :func:`~lungseg_utils.inference.compiled_forward` traces one graph
through all of them: seconds of building and tracing before the first scan. The members
share one architecture and differ only in their weights, so here the network is built once,
each member's weights are read into it in turn and kept as arrays, and one function of
(weights, input) is traced once and called for each member::

    forward = ensemble_forward("results/reference")     # members' probabilities, stacked
    prob64, std64 = inference.predict_prob64(forward, x64)

The command (:mod:`.segment`), its folder mode and the viewer app (:mod:`.browser`) use it.
Every member is checked against the manifest's SHA-256 first, as ``load_model`` does; an
ensemble whose members differ in architecture, or another Keras backend, falls back to
``load_model`` and ``compiled_forward``.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from .. import config, inference
from ..errors import LungsegInputError


def architecture(path: Path) -> dict:
    """The ``config.json`` of a ``.keras`` archive: the network, without its weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        raise LungsegInputError(f"{path}: not a Keras model file (a .keras file is a zip "
                                "archive saved by model.save).") from None


def inference_policy() -> str:
    """``"mixed_bfloat16"`` where the CPU computes bfloat16 natively, else ``"float32"``."""
    return config.training_precision("auto")


def with_policy(network: dict, policy: str) -> dict:
    """A copy of ``network`` (:func:`architecture`) whose layers compute under ``policy``,
    except the input and the output layer, which stay as they were (float32): a network
    trained in bfloat16 runs in float32 on a CPU without it, and the other way round."""
    network = json.loads(json.dumps(network))
    found = network["config"]["output_layers"]       # [name, 0, 0], or a list of those
    outputs = {found[0]} if isinstance(found[0], str) else {name for name, *_ in found}
    for layer in network["config"]["layers"]:
        dtype = layer["config"].get("dtype")
        if (isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy"
                and layer["class_name"] != "InputLayer" and layer["config"]["name"] not in outputs):
            dtype["config"]["name"] = policy
    return network


#: Keras's layers that :mod:`lungseg_utils.unet` computes with the same numbers in less time:
#: a member saved with one runs with the other (``unet.GroupNorm``: the reference's five
#: members 1.42 s a native scan against 1.68 s once traced; its trace costs a little more).
FASTER = {"GroupNormalization": {"class_name": "GroupNorm", "module": "lungseg_utils.unet",
                                 "registered_name": "lungseg>GroupNorm"}}


def with_faster_layers(network: dict) -> dict:
    """A copy of ``network`` (:func:`architecture`) with each Keras layer of :data:`FASTER`
    replaced by its faster equal, its settings and weights unchanged."""
    network = json.loads(json.dumps(network))
    for layer in network["config"]["layers"]:
        if layer.get("module") == "keras.layers" and layer["class_name"] in FASTER:
            layer.update(FASTER[layer["class_name"]])
    return network


def store_keys(network: dict) -> list[str]:
    """The name each layer of ``network`` (:func:`architecture`, in ``model.layers``' order)
    has in its ``.keras`` archive's weights file, as Keras saves them: the class name in snake
    case, numbered from the second on (``conv3d``, ``conv3d_1`` ...)."""
    used, keys = {}, []
    for layer in network["config"]["layers"]:
        name = re.sub(r"\W+", "", layer["class_name"])
        name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        used[name] = used.get(name, -1) + 1
        keys.append(f"{name}_{used[name]}" if used[name] else name)
    return keys


def build_network(network: dict, policy: str):
    """A fresh Keras model of ``network`` (:func:`architecture`) computing under ``policy``,
    with :data:`FASTER`'s layers in place of Keras's (its weights still to be read in)."""
    keras = config.import_keras_quietly()
    from .. import unet  # noqa: F401  (registers the custom objects a network may name)

    return keras.saving.deserialize_keras_object(with_faster_layers(with_policy(network, policy)))


def member_weights(model, file, network: dict) -> tuple[list, list]:
    """One member's weights, float32, in ``model``'s variable order (trainable, then the
    rest), read straight from the archive's HDF5 file (``layers/KEY/vars/I``, KEY from
    :func:`store_keys` of the file's ``network``): 0.04 s a member against 0.7 s for Keras's
    ``load_weights``. Where the file is laid out otherwise, Keras loads it and its variables,
    in ``model``'s order (:func:`with_faster_layers` keeps each layer's weights), are returned."""
    import h5py

    values = {}
    with zipfile.ZipFile(file) as archive, h5py.File(
            io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        for layer, key in zip(model.layers, store_keys(network)):
            own = layer.trainable_weights + layer.non_trainable_weights
            stored = h5.get(f"layers/{key}/vars") if own else {}
            arrays = [stored[str(i)][()].astype(np.float32) for i in range(len(own))   # numpy casts
                      if stored is not None and str(i) in stored]
            if stored is None or len(stored) != len(own) or any(
                    a.shape != tuple(v.shape) for a, v in zip(arrays, own)):
                saved = inference.load_model(file)       # another layout: Keras reads it
                return tuple([np.asarray(v.numpy(), np.float32) for v in variables] for variables
                             in (saved.trainable_variables, saved.non_trainable_variables))
            values.update({id(v): a for v, a in zip(own, arrays)})
    # every trained weight comes from the file; other state (a dropout layer's seed, unused
    # at inference) is the freshly built network's
    return ([values[id(v)] for v in model.trainable_variables],
            [values.get(id(v), np.asarray(v.numpy())) for v in model.non_trainable_variables])


def ensemble_forward(path=None, members: bool = True, policy: str | None = None):
    """``f(x: float32 (b, 64, 64, 64, 1))`` -> the members' probabilities stacked, float32
    (M, b, 64, 64, 64, 1) (``members=False``: their mean, (b, 64, 64, 64, 1)), for the model
    at ``path`` (a ``.keras`` file or an ensemble folder; default: the reference), computed
    under ``policy`` (default :func:`inference_policy`).

    On TensorFlow one graph of (weights, input) is traced at the first call and reused for
    every member and every later scan; otherwise, or when the members' architectures differ,
    :func:`lungseg_utils.inference.compiled_forward` of the loaded model (as trained).
    """
    files = inference.member_files(path)
    keras = config.import_keras_quietly()
    networks = [architecture(f) for f in files]
    if keras.backend.backend() != "tensorflow" or any(n != networks[0] for n in networks):
        return inference.compiled_forward(inference.load_model(path), members=members)
    import tensorflow as tf

    model = build_network(networks[0], policy or inference_policy())
    weights = [tuple([tf.constant(a) for a in arrays] for arrays in member_weights(model, f, n))
               for f, n in zip(files, networks)]

    @tf.function(reduce_retracing=True, jit_compile=False)
    def one(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    def forward(x):
        x = tf.constant(np.asarray(x, np.float32))
        stacked = np.stack([np.asarray(one(t, n, x), np.float32) for t, n in weights])
        return stacked if members else stacked.mean(axis=0)

    return forward


def exit_now(code: int):
    """End a command's process with ``code``: where TensorFlow is loaded, at once once
    stdout and stderr are flushed (its thread pools take about a second to tear down after
    every output is written); otherwise as ``sys.exit`` does. For a command's ``__main__``
    and console script only, never inside a notebook or a test."""
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))
