"""The measurements of ``benchmarks/run.py``, one task per fresh Python process.

Each task runs in its own process (``python benchmarks/tasks.py TASK PARAMS_JSON OUT_JSON``)
so that its peak resident memory (``ru_maxrss``) is its own and TensorFlow's settings (the
mixed-precision policy) do not leak into the next one. The small helpers at the top
(timing, FLOP counts, the matrix-product ceiling) import no TensorFlow and are tested in
``tests/test_benchmarks.py``.

Every timing is a list of repetitions after a warm-up; :func:`summarise` reports the median
and the spread.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: A training step costs about three forward passes: the forward pass itself, then the
#: gradients with respect to each layer's input and to its weights (each as costly).
TRAIN_STEP_FORWARDS = 3


# --------------------------------------------------------------------------- helpers


def summarise(values) -> dict:
    """Median and spread of repeated timings (seconds): median, min, max, quartiles, n, values."""
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        raise ValueError("summarise: no values.")
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()),
            "q1": float(q1), "q3": float(q3), "n": int(v.size),
            "values": [round(float(x), 6) for x in v]}


def timeit(fn, reps: int = 5, warmup: int = 1, max_s: float | None = None,
           min_reps: int = 2) -> dict:
    """Call ``fn()`` ``warmup`` times, then time up to ``reps`` calls.

    Stops early once the timed calls have taken ``max_s`` seconds in all (but after at least
    ``min_reps`` calls), so that a slow case costs a bounded time. Returns :func:`summarise`
    of the timed calls plus ``warmup_s`` (the first call, tracing included).
    """
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_s is not None and i + 1 >= min_reps and sum(times) >= max_s:
            break
    out = summarise(times)
    out["warmup_s"] = [round(w, 4) for w in warm]
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``, KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def conv3d_flops(in_shape, filters: int, kernel, use_bias: bool = True,
                 padding: str = "same", strides=1) -> int:
    """Analytic FLOPs of one Conv3D on one sample: 2 k^3 Cin Cout per output voxel (+ bias).

    in_shape: (X, Y, Z, Cin). ``padding='same'`` keeps ceil(X / stride) voxels per axis.
    """
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    strides = (strides,) * 3 if isinstance(strides, int) else tuple(strides)
    if padding == "same":
        out = [math.ceil(n / s) for n, s in zip(in_shape[:3], strides)]
    else:
        out = [(n - k) // s + 1 for n, k, s in zip(in_shape[:3], kernel, strides)]
    n_out = math.prod(out) * int(filters)
    return int(n_out * (2 * math.prod(kernel) * int(in_shape[3]) + (1 if use_bias else 0)))


def model_conv_flops(model, include_bias: bool = False) -> int:
    """Sum of :func:`conv3d_flops` over a Keras model's Conv3D layers (batch 1)."""
    total = 0
    for layer in model.layers:
        if type(layer).__name__ == "Conv3D":
            total += conv3d_flops(tuple(layer.input.shape[1:]), layer.filters,
                                  layer.kernel_size, include_bias and layer.use_bias,
                                  layer.padding, layer.strides)
    return total


def matmul_gflops(n: int = 2048, dtype: str = "float32", lib: str = "numpy",
                  reps: int = 5) -> dict:
    """Speed of an n x n by n x n matrix product (2 n^3 FLOP), GFLOP/s, best and median.

    lib: ``numpy`` (its BLAS; float32 only) or ``tensorflow`` (``tf.linalg.matmul``, oneDNN on
    x86; float32 or bfloat16). Returns {gflops_best, gflops_median, time: summarise(...)}.
    """
    flop = 2.0 * n ** 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if lib == "numpy":
        if dtype != "float32":
            raise ValueError("matmul_gflops: numpy is timed in float32 only.")
        fn = lambda: a @ b  # noqa: E731
    elif lib == "tensorflow":
        import tensorflow as tf

        ta, tb = (tf.cast(tf.constant(m), dtype) for m in (a, b))
        fn = lambda: tf.linalg.matmul(ta, tb).numpy()  # noqa: E731
    else:
        raise ValueError(f"matmul_gflops: lib={lib!r} must be 'numpy' or 'tensorflow'.")
    t = timeit(fn, reps=reps, warmup=1)
    return {"n": n, "dtype": dtype, "lib": lib, "gflops_best": flop / t["min"] / 1e9,
            "gflops_median": flop / t["median"] / 1e9, "time": t}


def steps_to_reach(rows: list[dict], threshold: float, steps_per_epoch: int,
                   key: str = "val_dice") -> dict | None:
    """First epoch whose ``key`` >= threshold in a training log; None if never reached.

    rows: ``training_log.csv`` rows (dicts with ``epoch`` and ``key``). Returns {epoch (1-based),
    steps, value}.
    """
    for i, row in enumerate(rows):
        value = row.get(key)
        if value not in (None, "") and float(value) >= threshold:
            epoch = int(row.get("epoch", i)) + 1
            return {"epoch": epoch, "steps": epoch * int(steps_per_epoch), "value": float(value)}
    return None


def cpu_info() -> dict:
    """CPU model, core count and the flags that matter here (Linux /proc/cpuinfo)."""
    info = {"logical_cpus": os.cpu_count(), "model": None, "avx512f": False,
            "avx512_bf16": False, "amx_bf16": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and info["model"] is None:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info.update(avx512f="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                        amx_bf16="amx_bf16" in flags)
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 1024 ** 2, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


# --------------------------------------------------------------------------- task plumbing


def _keras():
    from lungseg_utils import config

    return config.import_keras_quietly()


def _network_settings(settings: dict) -> dict:
    keys = ("base_filters", "depth", "reg_l2", "dropout_enc", "dropout_dec", "dropout_bot",
            "use_transpose", "norm")
    return {k: settings[k] for k in keys if k in settings}


def _case_folders(params) -> tuple[list[Path], dict]:
    """Case folders of the data set and the split to use (the reference's if given)."""
    from lungseg_utils import io

    data_dir = Path(params["data_dir"])
    folders = {p.name: p for p in io.discover_cases(data_dir)}
    split = params.get("split") or {}
    if not split or not set(split.get("train", [])) <= set(folders):
        names = sorted(folders)
        split = {"train": names[:-2] or names, "val": names[-2:-1], "test": names[-1:]}
    return [folders[c] for c in split["train"]], {
        k: [folders[c] for c in split.get(k, []) if c in folders] for k in ("train", "val", "test")}


def _inter_op_threads() -> int:
    """TensorFlow's inter-op thread setting (0 = its default: one per core)."""
    import tensorflow as tf

    return int(tf.config.threading.get_inter_op_parallelism_threads())


def _set_policy(precision: str):
    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16"
                                            else "float32")
    return keras


def _model_from_reference(params, precision: str = "f32"):
    """The reference model (or an untrained one of the same settings) under ``precision``.

    Weights are loaded into a model built under the policy, so under bf16 every layer but
    the float32 output computes in bfloat16 with the reference's weights.
    """
    keras = _keras()
    from lungseg_utils import model as unet

    path = params.get("model_path")
    saved = keras.saving.load_model(path, compile=False) if path else None
    _set_policy(precision)
    from lungseg_utils import config

    config.set_seeds(0)
    model = unet.build_unet(**_network_settings(params["settings"]))
    if saved is not None:
        model.set_weights(saved.get_weights())
    return model


# --------------------------------------------------------------------------- tasks


def task_ceiling(params) -> dict:
    """Matrix-product ceiling (numpy f32, TF f32, TF bf16) and the FLOP-count check."""
    _keras()
    n, reps = int(params["n"]), int(params["reps"])
    runs = {"numpy_f32": matmul_gflops(n, "float32", "numpy", reps),
            "tf_f32": matmul_gflops(n, "float32", "tensorflow", reps),
            "tf_bf16": matmul_gflops(n, "bfloat16", "tensorflow", reps)}
    out = {"runs": runs,
           "f32_gflops": max(runs["numpy_f32"]["gflops_best"], runs["tf_f32"]["gflops_best"]),
           "bf16_gflops": runs["tf_bf16"]["gflops_best"]}
    out["flops_check"] = flops_check(params["settings"], int(params.get("size", 64)))
    return out


def tf_profiler_flops(model, input_shape) -> dict:
    """FLOPs of one forward pass as TensorFlow's profiler counts them (graph of batch 1).

    Traces ``model(x, training=False)`` into a concrete function with a fully known input
    shape and runs ``tf.compat.v1.profiler`` (float_operation) on its graph; the split by
    op type asks the same FLOP registry node by node. Ops the registry does not know
    (MaxPool3D, Relu, Sigmoid...) count 0. Returns {total, by_op: {op type: flops}}.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops

    from lungseg_utils.config import _stderr_silenced

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    with _stderr_silenced():
        prof = tf.compat.v1.profiler.profile(graph=graph, cmd="scope", options=opts)
    by_op = {}
    for op in graph.get_operations():
        try:
            value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
        except ValueError:
            value = None
        if value:
            by_op[op.type] = by_op.get(op.type, 0) + int(value)
    return {"total": int(prof.total_float_ops), "by_op": by_op}


def flops_check(settings: dict, size: int = 64) -> dict:
    """``model.count_flops`` of the network against TensorFlow's profiler (batch 1)."""
    from lungseg_utils import model as unet

    model = unet.build_unet(input_shape=(size, size, size, 1), **_network_settings(settings))
    prof = tf_profiler_flops(model, (size, size, size, 1))
    conv = model_conv_flops(model)
    return {"input_size": size, "count_flops": unet.count_flops(model),
            "tf_profiler_total": prof["total"], "tf_profiler_by_op": prof["by_op"],
            "conv3d_analytic": conv, "tf_profiler_conv3d": prof["by_op"].get("Conv3D", 0),
            "conv3d_match": conv == prof["by_op"].get("Conv3D", 0)}


def task_train_steps(params) -> dict:
    """Seconds per training step (``train_on_batch``) at each batch size, one precision."""
    keras = _set_policy(params["precision"])
    from lungseg_utils import config
    from lungseg_utils import model as unet

    config.set_seeds(0)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # as lungseg_utils.train does by default
    size = int(params.get("size", 64))
    settings = params["settings"]
    model = unet.compile_model(
        unet.build_unet(input_shape=(size, size, size, 1), **_network_settings(settings)),
        settings.get("loss", "dice"), settings.get("learning_rate", 1e-3))
    batches = [int(b) for b in params["batches"]]
    if size == 64 and params.get("data_dir"):
        folders, _ = _case_folders(params)
        from lungseg_utils import augment

        x, y = augment.load_training_arrays(folders[:max(batches)])
        reps_needed = math.ceil(max(batches) / len(x))
        x, y = np.concatenate([x] * reps_needed), np.concatenate([y] * reps_needed)
    else:  # scaling runs: a smooth random volume and a ball-shaped mask (content is irrelevant)
        rng = np.random.default_rng(0)
        x = rng.random((max(batches), size, size, size, 1), dtype=np.float32)
        g = np.indices((size,) * 3).astype(np.float32) - size / 2
        ball = ((g ** 2).sum(0) < (size / 3) ** 2).astype(np.float32)[None, ..., None]
        y = np.repeat(ball, max(batches), axis=0)
    flops = unet.count_flops(model)
    rows = []
    for b in batches:
        xb, yb = x[:b], y[:b]
        t = timeit(lambda: model.train_on_batch(xb, yb), reps=int(params["reps"].get(str(b), 3)),
                   warmup=1, max_s=float(params.get("max_s", 20)))
        rows.append({"batch": b, "step_s": t, "peak_rss_mib": peak_rss_mib(),
                     "gflop_per_step": TRAIN_STEP_FORWARDS * flops * b / 1e9})
    return {"precision": params["precision"], "size": size, "forward_flops": flops,
            "inter_op_threads": _inter_op_threads(),
            "params": int(model.count_params()), "rows": rows}


def epoch_timer():
    """A Keras callback recording the wall time of each epoch, training batch and validation."""
    keras = _keras()

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.batches, self.val = [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t_epoch = self._t_batch = time.perf_counter()
            self.batches.append([])

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.batches[-1].append(now - self._t_batch)
            self._t_batch = now

        def on_test_begin(self, logs=None):
            self._t_val = time.perf_counter()

        def on_test_end(self, logs=None):
            self.val.append(time.perf_counter() - self._t_val)

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(time.perf_counter() - self._t_epoch)

    return EpochTimer()


def task_epoch(params) -> dict:
    """The input pipeline, then a real training run (``train.train``) of a few epochs.

    Pipeline: decoding the training cases from NIfTI (what re-reading them each epoch would
    cost) against augmenting cached arrays, in samples per second. Training: the reference
    settings for ``epochs`` epochs with all of train.train's callbacks; the first
    ``warmup_epochs`` (tracing; at base 16 also a slow first step after the first validation)
    are reported apart. Peak memory of this process = that of a quick-profile training run.
    """
    _keras()
    from lungseg_utils import augment
    from lungseg_utils import train as trainer

    folders, split = _case_folders(params)
    settings = params["settings"]
    decode = timeit(lambda: augment.load_training_arrays(folders), reps=3, warmup=1)
    x, y = augment.load_training_arrays(folders)
    samples = int(settings.get("samples_per_epoch") or len(folders))
    batch = int(settings["batch_size"])
    ds = augment.LungDataset((x, y), batch, settings, seed=0, augment=True,
                             samples_per_epoch=samples)

    def one_epoch():
        for i in range(len(ds)):
            ds[i]
        ds.on_epoch_end()

    aug = timeit(one_epoch, reps=int(params.get("aug_reps", 3)), warmup=1)
    pipeline = {"n_cases": len(folders), "samples_per_epoch": samples,
                "decode_all_cases_s": decode, "augment_epoch_s": aug,
                "augment_samples_per_s": samples / aug["median"],
                "decode_samples_per_s": len(folders) / decode["median"]}

    timer = epoch_timer()
    overrides = {k: v for k, v in settings.items() if k not in ("profile", "epochs")}
    overrides["epochs"] = int(params["epochs"])
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_") as out:
        names = {k: [p.name for p in v] for k, v in split.items()}
        t0 = time.perf_counter()
        trainer.train(data_dir=params["data_dir"], out_dir=out, profile=settings.get("profile"),
                      split={"seed": 0, **names}, verbose=0, callbacks=[timer], **overrides)
        total = time.perf_counter() - t0
    warm = min(int(params.get("warmup_epochs", 1)), len(timer.epochs) - 1)
    measured = timer.epochs[warm:]
    step_times = [t for ep in timer.batches[warm:] for t in ep]
    overhead = [e - sum(b) for e, b in zip(timer.epochs[warm:], timer.batches[warm:])]
    return {"pipeline": pipeline, "epochs_run": len(timer.epochs), "warmup_epochs": warm,
            "warmup_epochs_s": timer.epochs[:warm], "first_epoch_s": timer.epochs[0],
            "all_epochs_s": timer.epochs, "all_batches_s": timer.batches,
            "epoch_s": summarise(measured),
            "fit_step_s": summarise(step_times), "val_s": summarise(timer.val[warm:]),
            "overhead_s": summarise(overhead) if overhead else None,
            "steps_per_epoch": len(ds), "train_call_s": total,
            "peak_rss_mib": peak_rss_mib()}


def _test_arrays(params):
    from lungseg_utils import augment

    _, split = _case_folders(params)
    tests = split["test"] or split["val"]
    x, y = augment.load_training_arrays(tests)
    return [p.name for p in tests], x, y


def task_inference(params) -> dict:
    """One 64^3 volume: model.predict against the compiled call, 8-flip TTA, test-case Dice."""
    keras = _keras()
    from lungseg_utils import evaluate, inference

    precision = params["precision"]
    model = _model_from_reference(params, precision)
    names, x, y = _test_arrays(params)
    x1 = x[:1]
    reps = int(params["reps"])
    out = {"precision": precision, "trained": bool(params.get("model_path"))}
    out["predict_s"] = timeit(lambda: model.predict(x1, verbose=0), reps=reps, warmup=2)
    out["rss_after_predict_mib"] = peak_rss_mib()
    fwd = inference.compiled_forward(model)
    out["compiled_s"] = timeit(lambda: fwd(x1), reps=reps + 2, warmup=2)
    out["rss_after_compiled_mib"] = peak_rss_mib()
    out["tta8_s"] = timeit(lambda: inference.predict_prob64(fwd, x[0], tta=True),
                           reps=max(2, reps // 2), warmup=1)
    probs = np.stack([inference.predict_prob64(fwd, xi)[0] for xi in x])
    out["test_cases"] = [{"case_id": n, "dice": evaluate.dice(p > 0.5, yi[..., 0] > 0.5)}
                         for n, p, yi in zip(names, probs, y)]
    out["mean_test_dice"] = float(np.mean([r["dice"] for r in out["test_cases"]]))
    ref_path = params.get("compare_probs")
    if ref_path and Path(ref_path).exists():
        ref = np.load(ref_path)["probs"]
        out["agreement_with_f32"] = {
            "max_abs_prob_diff": float(np.abs(ref - probs).max()),
            "mask_dice_vs_f32": [evaluate.dice(a > 0.5, b > 0.5) for a, b in zip(probs, ref)],
            "voxels_changed": int(((ref > 0.5) != (probs > 0.5)).sum())}
    if params.get("save_probs"):
        np.savez_compressed(params["save_probs"], probs=probs)
    out["peak_rss_mib"] = peak_rss_mib()
    out["policy"] = keras.mixed_precision.global_policy().name
    out["inter_op_threads"] = _inter_op_threads()
    return out


def task_native(params) -> dict:
    """One native scan end to end, as the command line does it, stage by stage."""
    t_start = time.perf_counter()
    _keras()
    from lungseg_utils import evaluate, geometry, inference, io, preprocess

    t_import = time.perf_counter() - t_start
    t0 = time.perf_counter()
    model = _model_from_reference(params, "f32")
    fwd = inference.compiled_forward(model)
    t_model = time.perf_counter() - t0
    case_dir = Path(params["case_dir"])
    out_dir = Path(tempfile.mkdtemp(prefix="lungseg_bench_native_"))
    stages = {k: [] for k in ("load", "to_model_grid", "predict", "from_model_grid",
                              "refine_boundary", "save", "total")}
    tta_total = []
    result = None

    def run_once(record: bool, tta: bool = False):
        nonlocal result
        t = [time.perf_counter()]
        ct, affine, header = io.load_ct(case_dir / io.CT_NAME)
        t.append(time.perf_counter())
        ct64, grid = geometry.to_model_grid(ct, affine)
        x64 = preprocess.window_normalise(ct64)
        t.append(time.perf_counter())
        prob64, _ = inference.predict_prob64(fwd, x64, tta=tta)
        t.append(time.perf_counter())
        prob = geometry.from_model_grid(prob64, grid)
        t.append(time.perf_counter())
        mask = inference.refine_boundary((prob >= 0.5).astype(np.uint8), prob, ct,
                                         inference.boundary_band64(prob64, grid))
        t.append(time.perf_counter())
        io.save_nifti(mask, affine, out_dir / "lung_pred.nii.gz", header=header, overwrite=True)
        t.append(time.perf_counter())
        if tta:
            tta_total.append(t[-1] - t[0])
        elif record:
            for key, a, b in zip(stages, t[:-1], t[1:]):
                stages[key].append(b - a)
            stages["total"].append(t[-1] - t[0])
        result = (mask, ct.shape, io.spacing_from_affine(affine))

    run_once(False)
    for _ in range(int(params["reps"])):
        run_once(True)
    rss_plain = peak_rss_mib()
    run_once(False, tta=True)
    for _ in range(max(1, int(params["reps"]) - 1)):
        run_once(True, tta=True)
    mask, shape, spacing = result
    ref = io.load_nifti(case_dir / io.MASK_NAME, "mask")[0] if (case_dir / io.MASK_NAME).exists() else None
    return {"case_id": case_dir.name, "shape": list(shape), "spacing_mm": list(spacing),
            "import_s": t_import, "model_load_s": t_model,
            "stages_s": {k: summarise(v) for k, v in stages.items()},
            "tta8_total_s": summarise(tta_total), "peak_rss_mib_no_tta": rss_plain,
            "peak_rss_mib": peak_rss_mib(),
            "native_dice_tta": evaluate.dice(mask > 0, ref > 0) if ref is not None else None}


TASKS = {"ceiling": task_ceiling, "train_steps": task_train_steps, "epoch": task_epoch,
         "inference": task_inference, "native": task_native}


def main(argv=None) -> int:
    """``tasks.py TASK PARAMS_JSON OUT_JSON``: run one task and write its result as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    name, params, out_path = argv[0], json.loads(argv[1]), Path(argv[2])
    if params.get("inter_op_threads"):  # must come before TensorFlow runs its first op
        _keras()
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(int(params["inter_op_threads"]))
    t0 = time.perf_counter()
    result = TASKS[name](params)
    result["task_wall_s"] = time.perf_counter() - t0
    result.setdefault("peak_rss_mib", peak_rss_mib())
    out_path.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
