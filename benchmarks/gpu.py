"""Time the lungseg U-Net under ``KERAS_BACKEND=jax``: a training step and inference.

Meant for a GPU machine whose image has JAX but no TensorFlow; it runs on a CPU too if JAX
is installed (JAX then picks the CPU). Only ``keras``, ``numpy`` and ``lungseg_utils.model``
are needed (no TensorFlow, nibabel or scipy)::

    KERAS_BACKEND=jax python benchmarks/gpu.py                    # base 16, batch 2, 64^3
    python benchmarks/gpu.py --precision bf16 --batch 4 --out gpu_results.json

Writes ``benchmarks/gpu_results.json``, which ``benchmarks/run.py`` puts into results.json
and RESULTS.md. Random input: the content of a volume does not change its cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]


def _jax_forward(model):
    """``inference.compiled_forward``'s JAX branch (used if lungseg_utils.inference cannot load)."""
    import jax
    import numpy as np

    state = (model.trainable_variables, model.non_trainable_variables)

    @jax.jit
    def fn(tv, ntv, x):
        return model.stateless_call(tv, ntv, x, training=False)[0]

    return lambda x: np.asarray(fn(*state, np.asarray(x, np.float32)))


def _device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
            "n_devices": len(jax.devices()), "jax": jax.__version__}
    return info


def _device_peak_mib():
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return peak / 2 ** 20 if peak else None
    except Exception:  # noqa: BLE001  (CPU devices have no memory_stats)
        return None


def run(base_filters: int = 16, batch: int = 2, size: int = 64, precision: str = "f32",
        reps: int = 10) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import numpy as np

    from lungseg_utils import config
    import tasks  # benchmarks/tasks.py: timeit, summarise, peak_rss_mib (no TensorFlow)

    keras = config.import_keras_quietly()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"error: Keras was already imported with backend "
                         f"{keras.backend.backend()!r}; run with KERAS_BACKEND=jax.")
    from lungseg_utils import model as unet

    try:
        from lungseg_utils.inference import compiled_forward
    except ImportError:
        compiled_forward = _jax_forward
    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = unet.compile_model(unet.build_unet(input_shape=(size, size, size, 1),
                                               base_filters=base_filters))
    rng = np.random.default_rng(0)
    x = rng.random((max(batch, 8), size, size, size, 1), dtype=np.float32)
    g = np.indices((size,) * 3).astype(np.float32) - size / 2
    y = np.repeat((((g ** 2).sum(0) < (size / 3) ** 2).astype(np.float32))[None, ..., None],
                  len(x), axis=0)
    flops = unet.count_flops(model)
    t0 = time.perf_counter()
    train = tasks.timeit(lambda: model.train_on_batch(x[:batch], y[:batch]), reps=reps, warmup=2)
    fwd = compiled_forward(model)
    infer = tasks.timeit(lambda: fwd(x[:1]), reps=reps, warmup=2)
    tta = tasks.timeit(lambda: fwd(x[:8]), reps=max(3, reps // 2), warmup=1)
    return {
        "backend": "jax", **_device_info(), "python": platform.python_version(),
        "keras": keras.__version__, "precision": precision, "base_filters": base_filters,
        "batch": batch, "size": size, "forward_flops": flops,
        "train_step_s": train, "inference_s": infer, "tta8_s": tta,
        "train_gflops": tasks.TRAIN_STEP_FORWARDS * flops * batch / train["median"] / 1e9,
        "inference_gflops": flops / infer["median"] / 1e9,
        "device_peak_mib": _device_peak_mib(), "host_peak_rss_mib": tasks.peak_rss_mib(),
        "wall_s": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu.py",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--base_filters", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="input edge in voxels (multiple of 16)")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "gpu_results.json")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("jax") is None:
        print("error: JAX is not installed here; benchmarks/gpu.py needs it (pip install "
              "'jax[cuda12]' on a GPU machine, or 'jax' for its CPU).", file=sys.stderr)
        return 2
    result = run(args.base_filters, args.batch, args.size, args.precision, args.reps)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['device']} ({result['platform']}): training step "
          f"{result['train_step_s']['median'] * 1e3:.1f} ms at batch {args.batch}, inference "
          f"{result['inference_s']['median'] * 1e3:.1f} ms, TTA x8 "
          f"{result['tta8_s']['median'] * 1e3:.1f} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
