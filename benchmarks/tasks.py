"""The measurements: ``tasks.py PLAN OUT_JSON`` runs PLAN's ``{key: [task, params]}``, writes
``{key: result or {"error"}}``; ``run.py`` gives each its own process (a tiny run shares one)."""

import inspect
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TRAIN_STEP_FORWARDS = 3  # a training step: forward, input and weight gradients
#: Peak resident MiB of this process (``RUSAGE_CHILDREN``: of its largest finished child).
peak_rss_mib = lambda who=resource.RUSAGE_SELF: resource.getrusage(who).ru_maxrss / 1024  # noqa


def summarise(values) -> dict:
    v = [float(x) for x in values]  # min(): ValueError without values
    return {"min": min(v), "max": max(v), "median": float(np.median(v)), "n": len(v),
            "values": [round(x, 6) for x in v]}


def timeit(fn, reps: int, warmup: int = 1, max_s: float = float("inf")) -> dict:
    """``fn`` called ``warmup`` times, then up to ``reps`` timed calls (two once past ``max_s``)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < reps and (len(times) < 2 or sum(times) < max_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarise(times)


def seeded_keras(precision: str = "f32"):
    from lungseg_utils import config
    keras = config.import_keras_quietly()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    return keras


def _network(settings: dict, precision: str = "f32", size: int = 64, model_path=None):
    from lungseg_utils import inference, unet
    saved = inference.load_model(model_path) if seeded_keras() and model_path else None
    seeded_keras(precision)
    model = unet.build_unet(input_shape=(size, size, size, 1), **{
        k: settings[k] for k in inspect.signature(unet.build_unet).parameters if k in settings})
    if saved:
        model.set_weights(saved.get_weights())
    return model


def _split(params) -> dict:
    """Case folders by role: the reference's split, else all but two sorted cases, val, test."""
    from lungseg_utils import dataio
    folders = {p.name: p for p in dataio.discover_cases(params["data_dir"])}
    split, ids = params.get("split") or {}, sorted(folders)
    if not split or not set(split.get("train", [])) <= set(folders):
        split = {"train": ids[:-2] or ids, "val": ids[-2:-1], "test": ids[-1:]}
    return {k: [folders[c] for c in split.get(k, []) if c in folders]
            for k in ("train", "val", "test")}


def task_ceiling(p) -> dict:
    """An n x n by n x n matrix product (2 n^3 FLOP): NumPy f32, TensorFlow f32 and bf16."""
    seeded_keras()
    import tensorflow as tf
    n = int(p["n"])
    a, b = (np.random.default_rng(i).standard_normal((n, n), dtype=np.float32) for i in (0, 1))
    fns = {"numpy_f32": ("float32", lambda: a @ b)}
    for name, dtype in [("tf_f32", tf.float32)] + [("tf_bf16", tf.bfloat16)] * p["bf16"]:
        ta, tb = tf.cast(a, dtype), tf.cast(b, dtype)
        fns[name] = (dtype.name, lambda ta=ta, tb=tb: tf.linalg.matmul(ta, tb).numpy())
    runs = {name: {"n": n, "dtype": dtype, "gflops_best": 2 * n ** 3 / t["min"] / 1e9,
                   "gflops_median": 2 * n ** 3 / t["median"] / 1e9, "time": t}
            for name, (dtype, fn) in fns.items() for t in [timeit(fn, int(p["reps"]))]}
    return {"runs": runs, "f32_gflops": max(runs[k]["gflops_best"] for k in fns if "f32" in k),
            "bf16_gflops": runs.get("tf_bf16", {}).get("gflops_best")}


def task_train(p) -> dict:
    """Seconds per ``train_on_batch`` step by batch size (random volumes: content costs nothing)."""
    seeded_keras(p["precision"])
    import tensorflow as tf
    from lungseg_utils import unet
    tf.config.experimental.enable_op_determinism()  # as lungseg_utils.train does
    size, s, b_max = int(p["size"]), p["settings"], max(p["batches"])
    model = unet.compile_model(_network(s, p["precision"], size), s.get("loss", "dice"),
                               s.get("learning_rate", 1e-3))
    x = np.random.default_rng(0).random((b_max, size, size, size, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    flops, rows = unet.count_flops(model), []
    for b in p["batches"]:  # ascending: the peak so far is this batch's peak
        t = timeit(lambda: model.train_on_batch(x[:b], y[:b]), int(p["reps"]), max_s=p["max_s"])
        rows.append({"batch": b, "step_s": t, "peak_rss_mib": peak_rss_mib(),
                     "gflop_per_step": TRAIN_STEP_FORWARDS * flops * b / 1e9})
    return {"precision": p["precision"], "size": size, "forward_flops": flops, "rows": rows}


def task_epoch(p) -> dict:
    """The augmentation's speed, then a ``train.train`` run of a few epochs (peak memory)."""
    keras = seeded_keras()
    from lungseg_utils import config, dataset, train
    s, split = p["settings"], _split(p)
    x, y = dataset.load_training_arrays(split["train"])
    samples = int(s.get("samples_per_epoch") or len(x))
    ds = dataset.LungDataset((x, y), int(s["batch_size"]), s, seed=0, augment=True,
                             samples_per_epoch=samples)
    aug = timeit(lambda: ([ds[i] for i in range(len(ds))], ds.on_epoch_end()), int(p["aug_reps"]))
    # per epoch, "steps": its start, each step's end, its end; "val": validation's start, end
    eps, mark = [], lambda key: lambda *a, **kw: eps[-1][key].append(time.perf_counter())
    timer = keras.callbacks.LambdaCallback(on_test_begin=mark("val"), on_test_end=mark("val"),
        on_epoch_begin=lambda *a, **kw: eps.append({"steps": [time.perf_counter()], "val": []}),
        on_train_batch_end=mark("steps"), on_epoch_end=mark("steps"))
    profile = s.get("profile") if s.get("profile") in config.PROFILES else "quick"  # retired
    known = config.get_profile(profile)                # settings of a retired profile: all kept
    overrides = {k: v for k, v in s.items() if k in known and k not in ("profile", "epochs")}
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_") as out:
        train.train(data_dir=p["data_dir"], out_dir=out, profile=profile, verbose=0,
                    split={"seed": 0, **{k: [f.name for f in v] for k, v in split.items()}},
                    callbacks=[timer], epochs=int(p["epochs"]), **overrides)
    w, spans = int(p["warmup_epochs"]), [e["steps"][-1] - e["steps"][0] for e in eps]
    steps = [b - a for e in eps[w:] for a, b in zip(e["steps"], e["steps"][1:-1])]
    return {"pipeline": {"samples_per_epoch": samples, "augment_epoch_s": aug,
                         "augment_samples_per_s": samples / aug["median"]},
            "epochs_run": len(eps), "warmup_epochs_s": spans[:w],
            "epoch_s": summarise(spans[w:]), "fit_step_s": summarise(steps),
            "val_s": summarise([e["val"][-1] - e["val"][0] for e in eps[w:] if e["val"]] or [0.0]),
            "overhead_s": summarise([e["steps"][-1] - e["steps"][-2] for e in eps[w:]]),
            "steps_per_epoch": len(ds), "peak_rss_mib": peak_rss_mib()}


def task_inference(p) -> dict:
    """One 64³ volume: ``model.predict`` vs the compiled call, 8-flip TTA, test-case Dice."""
    from lungseg_utils import dataset, inference, metrics
    model = _network(p["settings"], p["precision"], model_path=p.get("model_path"))
    tests, reps = (split := _split(p))["test"] or split["val"], int(p["reps"])
    (x, y), fwd = dataset.load_training_arrays(tests), inference.compiled_forward(model)
    out = {"precision": p["precision"], "trained": bool(p.get("model_path")),
           "predict_s": timeit(lambda: model.predict(x[:1], verbose=0), reps, warmup=2),
           "compiled_s": timeit(lambda: fwd(x[:1]), reps + 2, warmup=2),
           "tta8_s": timeit(lambda: inference.predict_prob64(fwd, x[0], tta=True),
                            max(2, reps // 2))}
    dice = [metrics.dice(inference.predict_prob64(fwd, xi)[0] > 0.5, yi[..., 0] > 0.5)
            for xi, yi in zip(x, y)]
    return {**out, "test_cases": {f.name: float(d) for f, d in zip(tests, dice)},
            "mean_test_dice": float(np.mean(dice))}


def task_native(p) -> dict:
    """A native scan as the command does it (load, predict, save), without and with TTA; the
    ``ensemble`` as its runtime does (with ``bf16`` also in bfloat16): time and Dice."""
    from lungseg_utils import dataio, inference, metrics
    from lungseg_utils.scan import reader, runtime
    fwd = inference.compiled_forward(_network(p["settings"], model_path=p.get("model_path")))
    case, reps = Path(p["case_dir"]), int(p["reps"])
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_native_") as out:
        def runs(use_tta: bool, forward=fwd):  # reps + 1 runs, less the first (a warm-up) if any
            return [once(use_tta, forward) for _ in range(reps + 1)][min(reps, 1):]

        def once(use_tta, forward):
            t = [time.perf_counter()]
            ct, affine, header = reader.load_ct(case / "ct.nii.gz")
            t.append(time.perf_counter())
            mask = inference.predict_volume(forward, ct, affine, tta=use_tta)["mask"]
            t.append(time.perf_counter())
            dataio.save_nifti(mask, affine, f"{out}/lungs.nii.gz", header=header, overwrite=True)
            t.append(time.perf_counter())
            return [b - a for a, b in zip(t, t[1:])] + [t[-1] - t[0]], ct.shape, affine, mask
        plain, rss_plain = runs(False), peak_rss_mib()
        tta = [r[0][-1] for r in runs(True)]
        ens, policies = {}, ("float32", "mixed_bfloat16") if p.get("bf16") else ("float32",)
        for tag, policy in zip(("", "_bf16"), policies if p.get("ensemble") else ()):
            done = runs(False, runtime.ensemble_forward(p["ensemble"], members=True, policy=policy))
            truth = dataio.load_case(case).mask
            ens.update({"ensemble_members": len(inference.member_files(p["ensemble"])),
                        f"ensemble{tag}_total_s": summarise([r[0][-1] for r in done]),
                        "dice_single": metrics.dice(plain[-1][3], truth),
                        f"dice_ensemble{tag}": metrics.dice(done[-1][3], truth)})
    stages = zip(("load", "predict_volume", "save", "total"), zip(*(r[0] for r in plain)))
    _, shape, affine, _ = plain[-1]
    return {"case_id": case.name, "shape": list(shape),
            "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
            "stages_s": {k: summarise(v) for k, v in stages},
            "tta8_total_s": summarise(tta), "peak_rss_mib_no_tta": rss_plain, **ens}


def task_cli(p) -> dict:
    """The inference command on a native scan, a fresh process each time (``--verbose``); with
    ``folder``, once per rep on that folder (``later_scan``: the median of the scans after the
    first). ``runtime``: ``--runtime`` (OpenVINO's export: run.py's, in $LUNGSEG_CACHE)."""
    import re
    import subprocess
    src = Path(p.get("folder") or Path(p["case_dir"]) / "ct.nii.gz")
    runs, runtime = [], p.get("runtime", "auto")
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_cli_") as out:
        for i in range(int(p["reps"])):
            dest = ["--output_dir", f"{out}/d{i}"] if p.get("folder") else [
                "--output_mask", f"{out}/m{i}.nii.gz"]
            cmd = [sys.executable, "-m", "lungseg_utils.inference", "--input", str(src), *dest,
                   "--verbose", "--runtime", runtime, *(["--model", p["model"]] if p.get("model")
                                                        else [])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"inference command failed: {proc.stderr[-1500:]}")
            found = re.findall(r"^timing (\w+) ([0-9.]+) s$", proc.stderr, re.M)
            scans = [float(v) for k, v in found if k == "scan"]
            runs.append({"wall_s": time.perf_counter() - t0, "scan": scans[0],
                         **{k: float(v) for k, v in found if k != "scan"},
                         **({"later_scan": float(np.median(scans[1:]))} if scans[1:] else {})})
        dice = {}
        if not p.get("folder") and (src.parent / "lung.nii.gz").exists():   # the expert's mask
            from lungseg_utils import dataio, metrics
            dice = {"dice": metrics.dice(dataio.load_case(src.parent).mask,
                                         dataio.load_nifti(f"{out}/m0.nii.gz")[0] > 0)}
    return {"case_id": src.name if p.get("folder") else src.parent.name, "model": p.get("model"),
            "runtime": runtime, **dice,
            "command_peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
            **{k: summarise([r[k] for r in runs if k in r]) for k in sorted(set().union(*runs))}}


def task_viewer(p) -> dict:
    """The viewer app's *segment* button on a native scan, wired as app/viewer.ipynb does:
    the first press (it starts the runtime, loads the model) and the later ones."""
    from lungseg_utils.scan import browser
    app = browser.CaseBrowser({"scan": p["case_dir"]}, predict=browser.predictor_for(p["model"]))
    times = [time.perf_counter()]
    for _ in range(int(p["reps"]) + 1):
        if not app.segment():
            raise RuntimeError(f"segment failed on {p['case_dir']}")
        times.append(time.perf_counter())
    return {"case_id": Path(p["case_dir"]).name, "first_s": float((presses := np.diff(times))[0]),
            "again_s": summarise(presses[1:])}


TASKS = {"ceiling": task_ceiling, "cli": task_cli, "train": task_train, "epoch": task_epoch,
         "inference": task_inference, "native": task_native, "viewer": task_viewer}

if __name__ == "__main__":
    results = {}
    for key, (name, params) in json.loads(sys.argv[1]).items():
        t0 = time.perf_counter()
        try:
            results[key] = {**TASKS[name](params), "task_wall_s": time.perf_counter() - t0,
                            "peak_rss_mib": peak_rss_mib(),
                            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
        except Exception:  # noqa: BLE001  (this task's error; the next one runs)
            results[key] = {"error": traceback.format_exc()}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1, default=float))
