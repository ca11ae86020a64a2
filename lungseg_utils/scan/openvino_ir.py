"""The ensemble as an OpenVINO model: scans without TensorFlow.

A fresh ``lungseg segment`` process spends about 2.8 s importing TensorFlow and about a
second tracing the ensemble before its first forward pass, longer than the forward passes
themselves. OpenVINO, a runtime made for inference on CPUs (oneDNN underneath, as
TensorFlow here), imports in a fraction of a second and runs a model it has read before
from its own compiled cache. So the members are exported once, stacked in one OpenVINO
model (its *IR*: an ``.xml`` graph and a ``.bin`` of float32 weights), into a cache folder::

    lungseg export-ir                         # the reference; --model DIR for another
    forward = cached_forward(None)            # None where its IR is not in the cache

``lungseg segment`` and the viewer app run the IR when the cache holds one for the model
(its members' SHA-256 and OpenVINO's version are the key), TensorFlow otherwise
(:func:`forward_for`). The IR is float32, exported with ``unet.GroupNorm`` in place of
Keras's ``GroupNormalization`` (with Keras's layer OpenVINO's forward pass took 4 times as
long); OpenVINO computes in bfloat16 where TensorFlow would (:func:`runtime.inference_policy`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import config, dataio, inference
from ..errors import LungsegInputError
from . import runtime

#: Bump when the exported graph changes: older IRs are then not found.
FORMAT = 2
IR_NAME = "ensemble.xml"


def cache_root() -> Path:
    """``$LUNGSEG_CACHE``, else ``$XDG_CACHE_HOME/lungseg``, else ``~/.cache/lungseg``."""
    if os.environ.get("LUNGSEG_CACHE"):
        return Path(os.environ["LUNGSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lungseg"


def openvino_version() -> str | None:
    """OpenVINO's version, or None where it is not installed (imports it: about 0.2 s)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


def ir_path(path=None) -> Path | None:
    """Where the IR of the model at ``path`` (default: the reference) lives in the cache:
    one folder per (members' SHA-256, OpenVINO version, :data:`FORMAT`); None without
    OpenVINO. The members are checked against their manifest (:func:`inference.member_files`)."""
    version = openvino_version()
    if version is None:
        return None
    resolved = inference.resolve_model_path(path)
    files = inference.member_files(resolved)            # each checked against its manifest
    hashes = ([m["sha256"] for m in dataio.load_json(resolved / inference.MANIFEST)["members"]]
              if resolved.is_dir() else [dataio.file_sha256(f) for f in files])
    key = hashlib.sha256("/".join(hashes).encode())
    key.update(f"{version}/{FORMAT}".encode())
    return cache_root() / "openvino" / key.hexdigest()[:32] / IR_NAME


def cached_forward(path=None, policy: str | None = None):
    """``f(x: float32 (b, 64, 64, 64, 1))`` -> the members' probabilities stacked, float32
    (M, b, 64, 64, 64, 1), run by OpenVINO from the cached IR of the model at ``path``, in
    bfloat16 or float32 as ``policy`` (default :func:`runtime.inference_policy`) says; None
    where OpenVINO or the IR is missing."""
    xml = ir_path(path)
    if xml is None or not xml.exists():
        return None
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(xml.parent / "compiled")})   # its own compiled cache
    precision = "bf16" if (policy or runtime.inference_policy()) == "mixed_bfloat16" else "f32"
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                    "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def forward(x):
        out = request.infer({0: np.ascontiguousarray(x, np.float32)})[compiled.output(0)]
        return np.asarray(out, np.float32)

    return forward


def forward_for(path=None, engine: str = "auto", timing=None) -> tuple:
    """The fastest forward function of the model at ``path`` (default: the reference), as
    :func:`cached_forward` and :func:`runtime.ensemble_forward` make them, and its runtime's
    name: ``engine`` "auto" OpenVINO where the cache holds the model's IR, else TensorFlow;
    "openvino" or "tensorflow" only that one (no IR for "openvino" raises). ``timing(name,
    t0)``, if given, is told when TensorFlow's import ("keras_import") and loading the model
    ("model_load") end."""
    timing, t0 = timing or (lambda name, t0: None), time.perf_counter()
    if engine != "tensorflow" and (forward := cached_forward(path)) is not None:
        timing("model_load", t0)
        return forward, "openvino"
    if engine == "openvino":
        raise LungsegInputError(f"{path or 'results/reference'}: no OpenVINO model of it in the "
                                f"cache {cache_root()} (run lungseg export-ir --model ... first).")
    config.import_keras_quietly()
    timing("keras_import", t0)
    t0 = time.perf_counter()
    forward = runtime.ensemble_forward(path)
    timing("model_load", t0)
    return forward, "tensorflow"


def export_ir(path=None) -> Path:
    """Export the model at ``path`` (default: the reference) to the cache as one OpenVINO
    model of its members stacked (float32 weights); returns the ``.xml`` path. Needs
    TensorFlow (about 20 s); written whole or not at all."""
    xml = ir_path(path)
    if xml is None:
        raise LungsegInputError("export-ir: OpenVINO is not installed (pip install openvino).")
    keras = config.import_keras_quietly()
    if keras.backend.backend() != "tensorflow":
        raise LungsegInputError("export-ir: needs the TensorFlow backend (KERAS_BACKEND).")
    import openvino as ov
    import tensorflow as tf

    members = []
    for file in inference.member_files(path):
        network = runtime.architecture(file)
        model = runtime.build_network(network, "float32")   # Keras's GroupNormalization: 4x slower
        trainable, rest = runtime.member_weights(model, file, network)
        for variable, value in zip(model.trainable_variables + model.non_trainable_variables,
                                   trainable + rest):
            variable.assign(value)
        members.append(model)

    @tf.function(input_signature=[tf.TensorSpec((None, *config.MODEL_SHAPE, 1), tf.float32)])
    def stacked(x):
        return tf.stack([m(x, training=False) for m in members])

    graph = ov.convert_model(stacked.get_concrete_function())
    xml.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=xml.parent.parent))
    try:
        ov.save_model(graph, str(staging / IR_NAME), compress_to_fp16=False)
        shutil.rmtree(xml.parent, ignore_errors=True)
        staging.rename(xml.parent)                 # the whole IR appears at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cached_forward(path)            # compiled once for this CPU: OpenVINO keeps it beside the IR
    return xml
