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

import json
import zipfile
from pathlib import Path

import numpy as np

from .. import config, dataio, inference
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


def member_files(path=None) -> list[Path]:
    """The ``.keras`` files of a model: one file, or an ensemble's members in its manifest's
    order, each checked against the manifest's SHA-256 (default: the reference)."""
    path = inference.resolve_model_path(path)
    if not path.is_dir():
        return [path]
    manifest = dataio.load_json(path / inference.MANIFEST)
    members = manifest.get("members", [])
    if not members:
        raise LungsegInputError(f"{path / inference.MANIFEST}: lists no members.")
    files = [inference.resolve_model_path(path / m["file"]) for m in members]
    for member, file in zip(members, files):
        inference.check_member(file, member.get("sha256"), path / inference.MANIFEST)
    return files


def member_weights(model, files) -> list[tuple[list, list]]:
    """Each file's weights read into ``model`` in turn, kept as float32 arrays:
    ``[(trainable, non_trainable), ...]`` in ``model``'s variable order."""
    weights = []
    for file in files:
        model.load_weights(file)
        weights.append(tuple([np.asarray(v.numpy(), np.float32) for v in variables]
                             for variables in (model.trainable_variables,
                                               model.non_trainable_variables)))
    return weights


def ensemble_forward(path=None, members: bool = True, policy: str | None = None):
    """``f(x: float32 (b, 64, 64, 64, 1))`` -> the members' probabilities stacked, float32
    (M, b, 64, 64, 64, 1) (``members=False``: their mean, (b, 64, 64, 64, 1)), for the model
    at ``path`` (a ``.keras`` file or an ensemble folder; default: the reference), computed
    under ``policy`` (default :func:`inference_policy`).

    On TensorFlow one graph of (weights, input) is traced at the first call and reused for
    every member and every later scan; otherwise, or when the members' architectures differ,
    :func:`lungseg_utils.inference.compiled_forward` of the loaded model (as trained).
    """
    files = member_files(path)
    keras = config.import_keras_quietly()
    networks = [architecture(f) for f in files]
    if keras.backend.backend() != "tensorflow" or any(n != networks[0] for n in networks):
        return inference.compiled_forward(inference.load_model(path), members=members)
    import tensorflow as tf

    from .. import unet  # noqa: F401  (registers the custom objects a network may name)

    model = keras.saving.deserialize_keras_object(with_policy(networks[0],
                                                              policy or inference_policy()))
    weights = [tuple([tf.constant(a) for a in arrays] for arrays in pair)
               for pair in member_weights(model, files)]

    @tf.function(reduce_retracing=True, jit_compile=False)
    def one(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    def forward(x):
        x = tf.constant(np.asarray(x, np.float32))
        stacked = np.stack([np.asarray(one(t, n, x), np.float32) for t, n in weights])
        return stacked if members else stacked.mean(axis=0)

    return forward
