"""The lungseg U-Net under ``KERAS_BACKEND=jax``: a training step, one volume, 8-flip TTA.

For a GPU machine with JAX (no TensorFlow needed): ``gpu_results.json``, for the next run.py."""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu.py", description=__doc__.split("\n")[0])
    for flag, default in (("--base_filters", 16), ("--batch", 2), ("--size", 64), ("--reps", 10)):
        ap.add_argument(flag, type=int, default=default)   # --size: a multiple of 16
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "gpu_results.json")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("jax") is None:
        print("error: benchmarks/gpu.py needs JAX (pip install 'jax[cuda12]').", file=sys.stderr)
        return 2
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import numpy as np
    from lungseg_utils import unet
    from render import fmt_s
    from tasks import TRAIN_STEP_FORWARDS, peak_rss_mib, seeded_keras, timeit
    keras = seeded_keras(args.precision)  # seeded, with the precision's global policy
    n, b = args.size, args.batch
    model = unet.compile_model(unet.build_unet((n, n, n, 1), base_filters=args.base_filters))
    x = np.random.default_rng(0).random((max(b, 8), n, n, n, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    call = jax.jit(lambda tv, ntv, v: model.stateless_call(tv, ntv, v, training=False)[0])
    fwd = lambda v: np.asarray(call(  # noqa: E731  (compiled, as in inference.compiled_forward)
        *([w.value for w in ws] for ws in (model.trainable_variables,
                                           model.non_trainable_variables)), v))
    flops, t0 = unet.count_flops(model), time.perf_counter()
    train = timeit(lambda: model.train_on_batch(x[:b], y[:b]), args.reps, warmup=2)
    infer = timeit(lambda: fwd(x[:1]), args.reps, warmup=2)
    tta = timeit(lambda: fwd(x[:8]), max(3, args.reps // 2))
    result = {"device": getattr(dev := jax.devices()[0], "device_kind", str(dev)),
              "platform": dev.platform, "jax": jax.__version__, "keras": keras.__version__,
              **vars(args), "out": str(args.out), "forward_flops": flops, "train_step_s": train,
              "inference_s": infer, "tta8_s": tta, "host_peak_rss_mib": peak_rss_mib(),
              "train_gflops": TRAIN_STEP_FORWARDS * flops * b / train["median"] / 1e9,
              "device_peak_mib": ((dev.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2 ** 20
                                  if dev.platform == "gpu" else None),
              "wall_s": time.perf_counter() - t0, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['device']}: training step {fmt_s(train)} (batch {b}), inference "
          f"{fmt_s(infer)}, TTA x8 {fmt_s(tta)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
