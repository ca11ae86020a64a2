"""``make bench``: what the project costs on this machine, in one command (< 15 min, 2 cores).

Writes ``benchmarks/results.json`` (every number), ``benchmarks/RESULTS.md`` (the readable
version), ``benchmarks/scaling.png``, and the summary between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in README.md (if the markers are there). Usage::

    python benchmarks/run.py              # measure everything (about 5 min here, plus up to
                                          # 4 min waiting for other jobs to leave the CPU idle)
    python benchmarks/run.py --readme     # only re-write RESULTS.md, the plot and README's summary
    python benchmarks/run.py --tiny --out /tmp/b   # seconds-scale run of every code path (tests)

Each measurement runs in a fresh process (``benchmarks/tasks.py``), so the peak memory
reported for it is its own. What each number means is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import render  # noqa: E402  (benchmarks/render.py)
import tasks  # noqa: E402  (benchmarks/tasks.py: helpers only, no TensorFlow at import)

SCHEMA = "lungseg-bench/1"
JOB_TIMINGS = BENCH_DIR / "job_timings.json"
GPU_RESULTS = BENCH_DIR / "gpu_results.json"
#: The original student project: base 16, float32, batch 2, one pass over its 7 training
#: cases per epoch (4 steps), 80-150 epochs; its validation Dice after 80 epochs (two cases,
#: 0.973 and 0.981; ../shared/GUIDE.md, "Training on the nine cases").
ORIGINAL = {"train_cases": 7, "epochs": (80, 150), "val_dice": 0.973}
#: A task during which other processes used more than this many cores is flagged.
CONTENDED_CORES = 0.15
#: Stop starting optional tasks (the scaling runs) once this much time has gone.
TIME_BUDGET_S = 12 * 60


# --------------------------------------------------------------------------- inputs


def _read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_info() -> dict:
    """Settings, split, training log and model of results/reference/ (quick profile if absent)."""
    from lungseg_utils import config, io

    ref = config.REFERENCE_DIR
    info = {"dir": str(ref.relative_to(REPO_ROOT)), "exists": (ref / "best_model.keras").exists()}
    if (ref / "train_config.json").exists():
        cfg = io.load_json(ref / "train_config.json")
        info["settings"] = dict(cfg.get("settings", cfg))
        info["source"] = "results/reference/train_config.json"
    else:
        info["settings"] = config.get_profile("quick")
        info["source"] = "config.PROFILES['quick'] (no reference run found)"
    info["split"] = io.load_json(ref / "split.json") if (ref / "split.json").exists() else None
    info["log"] = _read_log(ref / "training_log.csv") if (ref / "training_log.csv").exists() else []
    tm = ref / "test_metrics.json"
    info["test_metrics"] = io.load_json(tm) if tm.exists() else None
    info["model_path"] = str(ref / "best_model.keras") if info["exists"] else None
    return info


def original_settings() -> dict:
    """The original project's settings: the ``full`` profile (base 16, float32, batch 2)."""
    from lungseg_utils import config

    s = config.get_profile("full")
    s["samples_per_epoch"] = ORIGINAL["train_cases"]
    return s


def _net_key(s: dict) -> tuple:
    return (s["base_filters"], s["depth"], s["norm"], bool(s["use_transpose"]))


def plan(tiny: bool = False) -> dict:
    """Every task's parameters. ``tiny``: base 2, small matrices, one or two repetitions."""
    from lungseg_utils import config

    ref = reference_info()
    orig = original_settings()
    data_dir = str(config.resolve_data_dir(verbose=False))
    native = config.native_data_dir()
    ref_settings = dict(ref["settings"])
    if tiny:
        ref_settings.update(base_filters=2, samples_per_epoch=4)
        orig.update(base_filters=2)
    common = {"data_dir": data_dir, "split": ref["split"]}
    nets = {}
    for label, s in (("reference", ref_settings), ("original", orig)):
        nets.setdefault(_net_key(s), {"settings": s, "labels": []})["labels"].append(label)
    p = {"tiny": tiny, "reference": ref, "original": orig, "ref_settings": ref_settings,
         "data_dir": data_dir, "tasks": []}

    def add(key, name, params, optional=False):
        p["tasks"].append({"key": key, "task": name, "params": {**common, **params},
                           "optional": optional})

    add("ceiling", "ceiling", {"n": 256 if tiny else 3072, "reps": 2 if tiny else 5,
                               "settings": orig})
    model_path = None if tiny else ref["model_path"]
    reps_inf = 2 if tiny else 5
    probs = str(Path(tempfile.gettempdir()) / f"lungseg_bench_probs_{os.getpid()}.npz")
    add("inference_f32", "inference", {"settings": ref_settings, "precision": "f32",
                                       "model_path": model_path, "reps": reps_inf,
                                       "save_probs": probs})
    add("inference_bf16", "inference", {"settings": ref_settings, "precision": "bf16",
                                        "model_path": model_path, "reps": reps_inf,
                                        "compare_probs": probs})
    if native is not None:
        cases = sorted(q for q in native.iterdir() if (q / "ct.nii.gz").exists())
        test_ids = (ref["split"] or {}).get("test", [])
        case = next((c for c in cases if c.name in test_ids), cases[0])
        add("native", "native", {"settings": ref_settings, "model_path": model_path,
                                 "case_dir": str(case), "reps": 2 if tiny else 3})
    batches = [1, 2] if tiny else [1, 2, 4]
    reps = {"1": 2, "2": 2} if tiny else {"1": 5, "2": 5, "4": 3}
    for i, (key, net) in enumerate(nets.items()):
        for precision in ("f32", "bf16"):
            add(f"train_{i}_{precision}", "train_steps",
                {"settings": net["settings"], "labels": net["labels"], "precision": precision,
                 "batches": batches, "reps": reps, "max_s": 5 if tiny else 15})
    # TensorFlow's default runs independent ops side by side (inter-op threads = cores), each
    # op itself on all cores: on 2 cores that can oversubscribe. One inter-op thread instead:
    add("threads_train", "train_steps",
        {"settings": orig, "labels": ["original"], "precision": "f32", "batches": [2],
         "reps": {"2": 2 if tiny else 5}, "max_s": 5 if tiny else 15, "inter_op_threads": 1})
    add("threads_inference", "inference", {"settings": ref_settings, "precision": "f32",
                                           "model_path": model_path, "reps": reps_inf,
                                           "inter_op_threads": 1})
    add("epoch", "epoch", {"settings": ref_settings, "epochs": 2 if tiny else 4,
                           "warmup_epochs": 1 if tiny else 2, "aug_reps": 1 if tiny else 3})
    for size in ((48,) if tiny else (96, 128)):
        add(f"scale_{size}", "train_steps",
            {"settings": orig, "labels": ["original"], "precision": "f32", "size": size,
             "batches": [1], "reps": {"1": 2 if tiny or size > 96 else 3},
             "max_s": 5 if tiny else 20}, optional=True)
    return p


# --------------------------------------------------------------------------- running


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (None without /proc/stat)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_task(name: str, params: dict, timeout_s: float = 900) -> dict:
    """Run ``tasks.py NAME`` in a fresh process; its result, or {"error": ...}.

    Also records ``other_load_cores``: the CPU that *other* processes used meanwhile, in
    cores on average (machine busy time minus the task's own), so that a timing taken
    beside another job can be flagged.
    """
    busy0, own0 = _busy_cpu_s(), _children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_task_") as tmp:
        out = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
        try:
            proc = subprocess.run([sys.executable, str(BENCH_DIR / "tasks.py"), name,
                                   json.dumps(params), str(out)], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            return {"error": (proc.stderr or proc.stdout)[-2000:], "process_wall_s": wall}
        result = json.loads(out.read_text())
        result["process_wall_s"] = wall
        busy1 = _busy_cpu_s()
        if busy0 is not None and busy1 is not None and wall > 0:
            other = (busy1 - busy0) - (_children_cpu_s() - own0)
            result["other_load_cores"] = round(max(0.0, other) / wall, 3)
        return result


def _memory_guard(params: dict, raw: dict) -> str | None:
    """Why a scaling run would not fit in the free memory (None if it should)."""
    try:
        import psutil
    except ImportError:
        return None
    base = raw.get("train_0_f32", {})
    rows = base.get("rows") or []
    if not rows:
        return None
    import_mib = 700.0
    per_vox = max(rows[0]["peak_rss_mib"] - import_mib, 100.0) / 64 ** 3
    need = import_mib + per_vox * int(params["size"]) ** 3
    free = psutil.virtual_memory().available / 2 ** 20
    if need > 0.8 * free:
        return f"skipped: needs about {need:.0f} MiB, {free:.0f} MiB free"
    return None


def other_load_cores(seconds: float = 1.0) -> float | None:
    """Cores that other processes keep busy right now (this process idles meanwhile)."""
    b0 = _busy_cpu_s()
    if b0 is None:
        return None
    time.sleep(seconds)
    return max(0.0, (_busy_cpu_s() - b0) / seconds)


def wait_until_quiet(budget_s: float, log=print) -> float:
    """Wait (at most ``budget_s``) until other processes use under CONTENDED_CORES cores."""
    t0 = time.perf_counter()
    load = other_load_cores()
    if load is None or load <= CONTENDED_CORES:
        return 0.0
    log(f"[bench] other processes use {load:.2f} cores; waiting up to {budget_s:.0f} s ...")
    while time.perf_counter() - t0 < budget_s:
        time.sleep(4.0)
        load = other_load_cores()
        if load is not None and load <= CONTENDED_CORES:
            break
    return time.perf_counter() - t0


def measure(p: dict, log=print, quiet_wait_s: float = 0.0) -> dict:
    """Run every planned task in order; optional ones only while time is left.

    Before each task, wait for the machine to be quiet, up to ``quiet_wait_s`` in all.
    """
    raw, t0, waited = {}, time.perf_counter(), 0.0
    for t in p["tasks"]:
        if quiet_wait_s - waited > 0:
            waited += wait_until_quiet(quiet_wait_s - waited, log=log)
        elapsed = time.perf_counter() - t0 - waited
        if t["optional"] and not p["tiny"]:
            reason = None
            if elapsed > TIME_BUDGET_S:
                reason = f"skipped: time budget ({TIME_BUDGET_S} s) used"
            reason = reason or _memory_guard(t["params"], raw)
            if reason:
                raw[t["key"]] = {"skipped": reason}
                log(f"[bench] {t['key']}: {reason}")
                continue
        log(f"[bench] {t['key']} ({t['task']}) at {elapsed:.0f} s ...", flush=True)
        raw[t["key"]] = run_task(t["task"], t["params"])
        other = raw[t["key"]].get("other_load_cores") or 0.0
        if other > CONTENDED_CORES:
            log(f"[bench] warning: other processes used {other:.2f} cores during {t['key']}")
        if "error" in raw[t["key"]]:
            log(f"[bench] {t['key']} FAILED:\n{raw[t['key']]['error']}")
    raw["_wall_s"] = time.perf_counter() - t0
    raw["_waited_for_quiet_s"] = waited
    return raw


# --------------------------------------------------------------------------- derived numbers


def _med(t):
    return t["median"] if t else None


def _steps(samples: int, batch: int) -> int:
    return math.ceil(int(samples) / int(batch))


def derive(p: dict, raw: dict) -> dict:
    """Turn the tasks' raw results into the report's tables and ratios."""
    ceil = raw.get("ceiling", {})
    f32_peak, bf16_peak = ceil.get("f32_gflops"), ceil.get("bf16_gflops")
    peak = {"f32": f32_peak, "bf16": bf16_peak}
    ref_s, orig_s = p["ref_settings"], p["original"]
    ep = raw.get("epoch", {})
    overhead = _med(ep.get("overhead_s")) or 0.0
    configs = {"reference": ref_s, "original": orig_s}
    # --- training steps
    training = []
    for t in p["tasks"]:
        if (t["task"] != "train_steps" or t["params"].get("size", 64) != 64
                or t["params"].get("inter_op_threads")):
            continue
        r = raw.get(t["key"], {})
        for row in r.get("rows", []):
            for label in t["params"]["labels"]:
                s = configs[label]
                b = row["batch"]
                step = row["step_s"]["median"]
                gflops = row["gflop_per_step"] / step
                n_steps = _steps(s.get("samples_per_epoch") or ORIGINAL["train_cases"], b)
                training.append({
                    "config": label, "precision": r["precision"], "batch": b,
                    "step_s": row["step_s"], "samples_per_s": b / step,
                    "gflop_per_step": row["gflop_per_step"], "gflops": gflops,
                    "fraction_of_ceiling": gflops / peak[r["precision"]] if peak[r["precision"]] else None,
                    "steps_per_epoch": n_steps, "epoch_s_est": n_steps * step + overhead,
                    "peak_rss_mib": row["peak_rss_mib"],
                    "is_profile_setting": (b == int(s["batch_size"]) and
                                           (r["precision"] == "bf16") == bool(s.get("mixed_precision")))})

    def train_row(config, precision, batch):
        return next((r for r in training if r["config"] == config and
                     r["precision"] == precision and r["batch"] == batch), None)

    # --- inference
    # train_0 is the reference network (planned first), at 64^3: FLOPs of one forward pass
    fwd_flops = (raw.get("train_0_f32", {}).get("forward_flops")
                 or ceil.get("flops_check", {}).get("count_flops") or 0)
    inference = {}
    for prec in ("f32", "bf16"):
        r = raw.get(f"inference_{prec}", {})
        if "compiled_s" not in r:
            continue
        g1 = fwd_flops / _med(r["compiled_s"]) / 1e9
        g8 = 8 * fwd_flops / _med(r["tta8_s"]) / 1e9
        inference[prec] = {
            "predict_s": r["predict_s"], "compiled_s": r["compiled_s"], "tta8_s": r["tta8_s"],
            "gflops_compiled": g1, "gflops_tta8": g8,
            "fraction_of_ceiling": g1 / peak[prec] if peak[prec] else None,
            "fraction_of_f32_ceiling": g1 / f32_peak if f32_peak else None,
            "fraction_of_ceiling_tta8": g8 / peak[prec] if peak[prec] else None,
            "test_cases": r["test_cases"], "mean_test_dice": r["mean_test_dice"],
            "peak_rss_mib": r["peak_rss_mib"], "trained": r["trained"],
            "agreement_with_f32": r.get("agreement_with_f32")}
    native = raw.get("native", {})
    # --- pipeline
    pipe = ep.get("pipeline")
    pipeline = None
    if pipe:
        consume = {}
        for prec in ("f32", "bf16"):
            row = train_row("reference", prec, int(ref_s["batch_size"]))
            if row:
                consume[prec] = row["samples_per_s"]
        pipeline = {**pipe, "model_consumes_samples_per_s": consume,
                    "headroom": {k: pipe["augment_samples_per_s"] / v for k, v in consume.items()}}
    # --- scaling
    scaling = {"input_size": [], "batch": [], "cases_per_epoch": []}
    f32_b1 = train_row("original", "f32", 1)
    if f32_b1:
        scaling["input_size"].append({"size": 64, "batch": 1, "step_s": f32_b1["step_s"],
                                      "gflop_per_step": f32_b1["gflop_per_step"],
                                      "gflops": f32_b1["gflops"],
                                      "peak_rss_mib": f32_b1["peak_rss_mib"]})
    for t in p["tasks"]:
        if t["task"] == "train_steps" and t["params"].get("size", 64) != 64:
            r = raw.get(t["key"], {})
            entry = {"size": t["params"]["size"], "batch": 1}
            if r.get("rows"):
                row = r["rows"][0]
                entry.update(step_s=row["step_s"], gflop_per_step=row["gflop_per_step"],
                             gflops=row["gflop_per_step"] / row["step_s"]["median"],
                             peak_rss_mib=row["peak_rss_mib"])
            else:
                entry["note"] = r.get("skipped") or (r.get("error") or "")[-300:]
            scaling["input_size"].append(entry)
    for r in training:
        if r["config"] == "original":
            scaling["batch"].append({k: r[k] for k in ("precision", "batch", "step_s",
                                                       "samples_per_s", "peak_rss_mib")})
    ref_step = train_row("reference", "bf16" if ref_s.get("mixed_precision") else "f32",
                         int(ref_s["batch_size"]))
    n_cases = (pipe or {}).get("n_cases") or len((p["reference"]["split"] or {}).get("train", [])) or 6
    if ref_step:
        b = int(ref_s["batch_size"])
        for s in sorted({n_cases, 12, 24, 48, int(ref_s.get("samples_per_epoch") or n_cases)}):
            est = _steps(s, b) * ref_step["step_s"]["median"] + overhead
            scaling["cases_per_epoch"].append({
                "samples_per_epoch": s, "steps": _steps(s, b), "epoch_s_est": est,
                "s_per_sample": est / s,
                "measured_epoch_s": (ep["epoch_s"] if s == ep.get("steps_per_epoch", 0) * b
                                     and ep.get("epoch_s") else None)})
        scaling["cached_mib_per_case"] = 2 * 4 * 64 ** 3 / 2 ** 20
    # --- ratios ("before / after", both from this run)
    ratios = {}
    inf32, inf16 = inference.get("f32"), inference.get("bf16")
    if inf32:
        ratios["compiled_vs_predict_f32"] = _med(inf32["predict_s"]) / _med(inf32["compiled_s"])
    if inf16:
        ratios["compiled_vs_predict_bf16"] = _med(inf16["predict_s"]) / _med(inf16["compiled_s"])
    if inf32 and inf16:
        ratios["bf16_vs_f32_inference"] = _med(inf32["compiled_s"]) / _med(inf16["compiled_s"])
        ratios["bf16_vs_f32_tta8"] = _med(inf32["tta8_s"]) / _med(inf16["tta8_s"])
        ratios["bf16_dice_change"] = inf16["mean_test_dice"] - inf32["mean_test_dice"]
    for b in (1, 2, 4):
        a, c = train_row("original", "f32", b), train_row("original", "bf16", b)
        if a and c:
            ratios[f"bf16_vs_f32_training_batch{b}"] = _med(a["step_s"]) / _med(c["step_s"])
    th_t, th_i = raw.get("threads_train", {}), raw.get("threads_inference", {})
    a = train_row("original", "f32", 2)
    if a and th_t.get("rows"):
        ratios["inter_op_1_vs_default_training_batch2"] = _med(a["step_s"]) / _med(th_t["rows"][0]["step_s"])
    if inf32 and "compiled_s" in th_i:
        ratios["inter_op_1_vs_default_inference"] = _med(inf32["compiled_s"]) / _med(th_i["compiled_s"])
        ratios["inter_op_1_vs_default_tta8"] = _med(inf32["tta8_s"]) / _med(th_i["tta8_s"])
    if pipe and ep.get("epoch_s"):
        dec, aug = _med(pipe["decode_all_cases_s"]), _med(pipe["augment_epoch_s"])
        ratios["cached_vs_reread_data_per_epoch"] = (dec + aug) / aug
        ratios["reread_share_of_epoch"] = dec / _med(ep["epoch_s"])
    cpe = {r["samples_per_epoch"]: r for r in scaling["cases_per_epoch"]}
    spe = int(ref_s.get("samples_per_epoch") or n_cases)
    if n_cases in cpe and spe in cpe and spe != n_cases:
        ratios["samples_per_epoch_cost_per_sample"] = cpe[n_cases]["s_per_sample"] / cpe[spe]["s_per_sample"]
    time_to_dice = _time_to_dice(p, training, overhead)
    if time_to_dice.get("speedup"):
        ratios.update({f"quick_vs_original_{k}": v for k, v in time_to_dice["speedup"].items()})
    # --- memory targets
    target = 4096.0
    train_mib = ep.get("peak_rss_mib")
    infer_mib = max([v for v in (native.get("peak_rss_mib"),
                                 (inf32 or {}).get("peak_rss_mib")) if v] or [0]) or None
    memory = {"target_mib": target, "training_quick_profile_mib": train_mib,
              "inference_mib": infer_mib, "native_end_to_end_mib": native.get("peak_rss_mib"),
              "native_end_to_end_no_tta_mib": native.get("peak_rss_mib_no_tta"),
              "training_ok": (train_mib or 1e9) < target, "inference_ok": (infer_mib or 1e9) < target}
    return {"ceiling": ceil, "training": training, "epoch": {k: v for k, v in ep.items()
                                                              if k != "pipeline"} or None,
            "pipeline": pipeline, "inference": inference, "native": native or None,
            "scaling": scaling, "ratios": ratios, "time_to_dice": time_to_dice,
            "memory": memory, "forward_flops": fwd_flops}


def _time_to_dice(p: dict, training: list, overhead: float) -> dict:
    """Steps and time the reference run needed to reach the original's validation Dice."""
    ref = p["reference"]
    log, s = ref["log"], p["ref_settings"]
    out = {"original": ORIGINAL, "reference_epochs": len(log)}
    if not log:
        out["note"] = "no reference training log"
        return out
    spe = _steps(s.get("samples_per_epoch") or len(ref["split"]["train"]), s["batch_size"])
    best = max(float(r["val_dice"]) for r in log)
    out.update(reference_steps_per_epoch=spe, reference_best_val_dice=best)
    for thr in (0.95, 0.97, ORIGINAL["val_dice"], 0.98):
        out[f"reach_{thr}"] = steps_to_reach_safe(log, thr, spe)
    wall = (ref["test_metrics"] or {}).get("training", {}).get("wall_s_this_session")
    if wall:
        out["reference_wall_s"] = wall
        out["reference_s_per_epoch_logged"] = wall / len(log)
    prec = "bf16" if s.get("mixed_precision") else "f32"
    r_ref = next((r for r in training if r["config"] == "reference" and r["precision"] == prec
                  and r["batch"] == int(s["batch_size"])), None)
    r_orig = next((r for r in training if r["config"] == "original" and r["precision"] == "f32"
                   and r["batch"] == 2), None)
    reach = out.get(f"reach_{ORIGINAL['val_dice']}")
    if r_ref and r_orig:
        orig_steps_per_epoch = _steps(ORIGINAL["train_cases"], 2)
        orig_epoch_s = orig_steps_per_epoch * _med(r_orig["step_s"]) + overhead
        out["original_epoch_s_est"] = orig_epoch_s
        # string keys: the same object before and after a JSON round trip
        out["original_s"] = {str(e): e * orig_epoch_s for e in ORIGINAL["epochs"]}
        out["original_steps"] = {str(e): e * orig_steps_per_epoch for e in ORIGINAL["epochs"]}
        ref_epoch_s = spe * _med(r_ref["step_s"]) + overhead
        out["reference_epoch_s_est"] = ref_epoch_s
        out["reference_whole_run"] = {"epochs": len(log), "steps": len(log) * spe,
                                      "s_est": len(log) * ref_epoch_s}
        if reach:
            t_ref = reach["epoch"] * ref_epoch_s
            out["reference_s_to_reach"] = t_ref
            out["speedup"] = {f"time_{e}ep": out["original_s"][str(e)] / t_ref
                              for e in ORIGINAL["epochs"]}
            out["speedup"].update({f"steps_{e}ep": out["original_steps"][str(e)] / reach["steps"]
                                   for e in ORIGINAL["epochs"]})
    return out


def steps_to_reach_safe(log, thr, spe):
    try:
        return tasks.steps_to_reach(log, thr, spe)
    except (KeyError, ValueError):
        return None


def machine_info() -> dict:
    info = tasks.cpu_info()
    info.update(python=platform.python_version(), platform=platform.platform())
    try:
        from importlib.metadata import version

        for pkg in ("tensorflow", "keras", "numpy"):
            try:
                info[pkg] = version(pkg)
            except Exception:  # noqa: BLE001
                info[pkg] = None
    except ImportError:
        pass
    return info


def background_load() -> dict:
    """Load average and other processes busy on the CPU (they slow every timing down)."""
    out = {"loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        import psutil
    except ImportError:
        return out
    procs = [p for p in psutil.process_iter(["pid", "name", "nice", "cmdline"])
             if p.pid != os.getpid()]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(2.0)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
            if pct >= 20:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
                busy.append({"cpu_percent": round(pct), "nice": p.info["nice"],
                             "command": cmd[:120]})
        except psutil.Error:
            pass
    out["busy_processes"] = busy
    return out


def gpu_section() -> dict:
    if GPU_RESULTS.exists():
        return {"lent": True, **json.loads(GPU_RESULTS.read_text())}
    return {"lent": False, "note": "No GPU machine was lent to this task: benchmarks/gpu.py "
                                   "(KERAS_BACKEND=jax) is written but has not run on a GPU."}


def job_section() -> dict | None:
    if JOB_TIMINGS.exists():
        return json.loads(JOB_TIMINGS.read_text())
    return None


def collect(tiny: bool = False, log=print, quiet_wait_s: float = 0.0) -> dict:
    """Plan, measure and derive: the whole ``results.json`` object."""
    t0 = time.perf_counter()
    p = plan(tiny)
    load_before = background_load()
    for b in load_before.get("busy_processes", []):
        log(f"[bench] warning: another process uses {b['cpu_percent']} % CPU (nice {b['nice']}): "
            f"{b['command'][:70]} — timings will be slower and noisier.")
    raw = measure(p, log=log, quiet_wait_s=quiet_wait_s)
    load_after = background_load()
    d = derive(p, raw)
    ref = p["reference"]
    return {
        "schema": SCHEMA, "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "tiny": tiny, "machine": machine_info(), "bench_wall_s": time.perf_counter() - t0,
        "background": {"before": load_before, "after": load_after,
                       "waited_for_quiet_s": raw.get("_waited_for_quiet_s", 0.0)},
        "configs": {"reference": {"source": ref["source"], "settings": p["ref_settings"],
                                  "trained_model": ref["model_path"] is not None and not tiny},
                    "original": {"source": "config.PROFILES['full'] + 7 cases an epoch",
                                 "settings": p["original"], **ORIGINAL}},
        **d,
        "errors": {k: v["error"] for k, v in raw.items() if isinstance(v, dict) and "error" in v},
        "task_wall_s": {k: v.get("process_wall_s") for k, v in raw.items()
                        if isinstance(v, dict) and "process_wall_s" in v},
        "other_load_cores": {k: v.get("other_load_cores") for k, v in raw.items()
                             if isinstance(v, dict) and "other_load_cores" in v},
        "job": job_section(), "gpu": gpu_section(),
    }


# --------------------------------------------------------------------------- command line


def write_outputs(results: dict, out_dir: Path, readme: Path | None) -> list[Path]:
    """results.json, RESULTS.md, scaling.png in ``out_dir``; README summary if ``readme``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float) + "\n")
    tmp.replace(path)
    written.append(path)
    written.append(render.plot_scaling(results, out_dir / "scaling.png"))
    md = out_dir / "RESULTS.md"
    md.write_text(render.results_markdown(results))
    written.append(md)
    if readme is not None and render.update_readme(readme, results):
        written.append(readme)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=BENCH_DIR,
                    help="folder for results.json, RESULTS.md, scaling.png (default benchmarks/)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny network and one or two repetitions: checks every code path fast")
    ap.add_argument("--readme", action="store_true",
                    help="measure nothing: re-render RESULTS.md, scaling.png and README's "
                         "summary from an existing results.json")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument("--quiet-wait", type=float, default=240.0, metavar="S",
                    help="before each measurement, wait until other processes leave the CPU "
                         "idle, up to S seconds in all (default 240; 0: never wait)")
    args = ap.parse_args(argv)
    readme = None if args.no_readme or args.tiny else REPO_ROOT / "README.md"
    if args.readme:
        path = args.out / "results.json"
        if not path.exists():
            print(f"error: {path} does not exist; run python benchmarks/run.py first.",
                  file=sys.stderr)
            return 2
        results = json.loads(path.read_text())
        results["job"] = job_section() or results.get("job")
        results["gpu"] = gpu_section() if GPU_RESULTS.exists() else results.get("gpu")
    else:
        results = collect(tiny=args.tiny, quiet_wait_s=0.0 if args.tiny else args.quiet_wait)
    for p in write_outputs(results, args.out, readme):
        print("wrote", p)
    if results.get("errors"):
        print(f"{len(results['errors'])} task(s) failed: {', '.join(results['errors'])}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
