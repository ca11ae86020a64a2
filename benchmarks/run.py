"""``make bench``: what the project costs on this machine, measured in one command."""

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

BENCH_DIR, REPO_ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR)]
import render  # noqa: E402  (benchmarks/render.py: results -> Markdown and plot, no TF)

SCHEMA = "lungseg-bench/3"
#: results.json's columns -> their processes' environment (*_eigen: oneDNN off, the "before").
ISA_ENV = {"avx512": {}, "avx2": {}, "avx2_eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
           "avx512_eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
BF16_AVX2 = "bfloat16 not measured: no AVX-512 BF16"
EIGEN_SKIP = "not measured with oneDNN off (the before column measures the main figures only)"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_info() -> dict:
    info = {"model": platform.processor() or None, "logical_cpus": os.cpu_count(), "flags": []}
    with contextlib.suppress(OSError, IndexError, ValueError):
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = text.split("model name", 1)[1].split(":", 1)[1].split("\n")[0].strip()
        flags = text.split("\nflags", 1)[1].split(":", 1)[1].split("\n")[0].split()
        info["flags"] = [f for f in CPU_FLAGS if f in flags]
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return info


def reference_info() -> dict:
    """Settings, split and model (member 0's) of results/reference/ (else the quick profile)."""
    from lungseg_utils import config, dataio
    folder = config.REFERENCE_DIR
    cfg, split, manifest = (dataio.load_json(folder / f) if (folder / f).exists() else None
                            for f in ("train_config.json", "split.json", "manifest.json"))
    model = folder / "best_model.keras"
    if not model.exists() and manifest:  # member 0
        model = folder / manifest["members"][0]["file"]
    return {"source": "results/reference/train_config.json" if cfg
            else "config.get_profile('quick')",
            "settings": cfg["settings"] if cfg else config.get_profile("quick"), "split": split,
            "model_path": str(model) if model.exists() else None}


def plan(ref: dict, tiny: bool, isa: str) -> list[tuple[str, str, dict]]:
    """(key, task, params) of column ``isa``'s tasks (``*_eigen``: fewer, its steps are slow)."""
    from lungseg_utils import config, synthetic
    r = (lambda full, few=2: few if tiny else full)  # noqa: E731  (a full run's, a tiny run's)
    s = {**ref["settings"], **r({}, {"base_filters": 2, "depth": 1, "samples_per_epoch": 4})}
    eigen = {"skip": EIGEN_SKIP} if isa.endswith("_eigen") and not tiny else {}
    skip = {"skip": BF16_AVX2} if isa.startswith("avx2") else eigen
    step = {"precision": "f32", "size": 64, "reps": r(5), "max_s": 15}
    infer = {"precision": "f32", "model_path": r(ref["model_path"], None), "reps": r(5)}
    tasks = [("ceiling", "ceiling", {"n": r(3072, 256), "reps": r(5), "bf16": not skip}),
             ("train_f32", "train", {**step, "batches": r([1, 2, 4], [2])}),
             ("train_bf16", "train", {**step, "precision": "bf16", "batches": [2], **skip}),
             ("train_bf16_keras_norm", "train", {**step, "precision": "bf16", "batches": [2],
                                                 "settings": {**s, "norm": "keras_group"}, **skip}),
             *((f"scale_{n}", "train", {**step, "size": n, "batches": [1], "reps": r(3),
                                        "max_s": 20, **eigen}) for n in r((96, 128), (32,))),
             ("epoch", "epoch", {"epochs": r(4), "warmup_epochs": r(4) // 2, "aug_reps": r(3, 1)}),
             ("inference_f32", "inference", infer),
             ("inference_bf16", "inference", {**infer, "precision": "bf16", **skip})]
    native = config.native_data_dir()
    if native is not None:
        cases = sorted(q for q in native.iterdir() if (q / "ct.nii.gz").exists())
        case = next((c for c in cases if c.name in (ref["split"] or {}).get("test", [])), cases[0])
        model = os.path.relpath(config.REFERENCE_DIR, REPO_ROOT)
        scan = {"case_dir": str(case), "model": model, "runtime": r("auto", "tensorflow")}
        tasks += [("cli", "cli", {**scan, "reps": r(3, 1)}),
                  *r([("cli_tensorflow", "cli", {**scan, "reps": 3, "runtime": "tensorflow"})], []),
                  ("cli_folder", "cli", {**scan, "reps": 1, "folder": r(
                      str(native), str(synthetic.resolve_data_dir()))}),
                  ("viewer", "viewer", {**scan, "reps": r(3, 1)}),
                  ("native", "native", {**infer, "case_dir": str(case), "reps": r(3, 0), "bf16":
                                        not skip, "ensemble": r(str(config.REFERENCE_DIR), None)})]
    common = {"data_dir": str(synthetic.resolve_data_dir()), "split": ref["split"], "settings": s}
    return [(k, t, {**common, **p}) for k, t, p in tasks]


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (None without /proc/stat)."""
    try:
        f = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(budget_s: float) -> float:
    """Seconds waited (about ``budget_s`` at most) until others use < CONTENDED_CORES cores."""
    t0 = time.perf_counter()
    while True:
        b0 = _busy_cpu_s()
        time.sleep(1.0)
        if b0 is None or _busy_cpu_s() - b0 <= render.CONTENDED_CORES \
                or time.perf_counter() - t0 > budget_s:
            return time.perf_counter() - t0


def run_tasks(todo: dict, env: dict, timeout_s: float = 1800) -> dict:
    """{key: result or {"error"}} of ``todo`` ({key: (task, params)}) in a process under ``env``."""
    mine0 = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # user + system CPU seconds
    busy0, t0, timeout_s = _busy_cpu_s(), time.perf_counter(), timeout_s * len(todo)
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_") as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(
                [sys.executable, BENCH_DIR / "tasks.py", json.dumps(todo), out], cwd=REPO_ROOT,
                capture_output=True, text=True, timeout=timeout_s,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", **env})
            error = f"exit status {proc.returncode}\n{proc.stderr[-2000:]}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:.0f} s"
        if not out.exists():
            return {k: {"error": error} for k in todo}
        results, wall = json.loads(out.read_text()), time.perf_counter() - t0
    load = {} if busy0 is None else {"other_load_cores": round(max(0.0, _busy_cpu_s() - busy0 - (
        sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - mine0)) / wall, 3)}
    return {k: r if "error" in r else {**r, "process_wall_s": wall, **load}
            for k, r in results.items()}


def measure(isa: str, tiny: bool, quiet_wait_s: float, ref: dict, only=()) -> dict:
    """``results["isa"][isa]``: the planned tasks (``only``: those), a fresh process each; a tiny
    run only checks the code: it waits for nothing, runs them in two processes side by side."""
    t0, waited, env = time.perf_counter(), 0.0, ISA_ENV[isa]
    todo = {k: (t, p) for k, t, p in plan(ref, tiny, isa) if not only or k in only}
    tasks = {k: {"skipped": p["skip"]} for k, (_, p) in todo.items() if p.get("skip")}
    keys = [k for k in todo if k not in tasks]
    groups = [g for g in (keys[::2], keys[1::2]) if g] if tiny else [[k] for k in keys]

    def run(group):
        nonlocal waited
        if quiet_wait_s > waited:
            waited += wait_until_quiet(quiet_wait_s - waited)
        print(f"[bench {isa}] {', '.join(group)} at {time.perf_counter() - t0:.0f} s ...\n",
              end="", flush=True)
        for key, result in run_tasks({k: todo[k] for k in group}, {**env, **cache}).items():
            tasks[key] = result
            if tiny:  # the process beside it is no outside load
                result.pop("other_load_cores", None)
            elif result.get("other_load_cores", 0) > render.CONTENDED_CORES:
                print(f"[bench {isa}] warning: other processes used "
                      f"{result['other_load_cores']:.2f} cores during {key}")
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_cache_") as folder, \
            ThreadPoolExecutor(2) as pool:  # tiny: side by side; else in the main thread (Ctrl-C)
        cache = {"LUNGSEG_CACHE": folder}   # the command's and viewer's OpenVINO model: the
        if not tiny:                        # reference's, exported untimed (a tiny run: none)
            subprocess.run([sys.executable, "-m", "lungseg_utils", "export-ir"], check=True,
                           capture_output=True, cwd=REPO_ROOT, env={**os.environ, **cache})
        list((pool.map if tiny else map)(run, groups))
    tasks = {k: tasks[k] for k in todo}
    errors = {k: v.pop("error") for k, v in tasks.items() if "error" in v}
    for key, text in errors.items():
        print(f"[bench {isa}] {key} FAILED: {text}", file=sys.stderr)
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "tiny": tiny, "env": env,
            "wall_s": time.perf_counter() - t0, "waited_s": waited, "tasks": tasks,
            "errors": errors}


def merge(old: dict | None, key: str, tiny: bool) -> dict:
    """The columns of ``old`` to keep beside a new ``key``: the others of its schema, tiny-ness."""
    ok = (old or {}).get("schema") == SCHEMA
    return {k: e for k, e in old["isa"].items() if k != key and e["tiny"] == tiny} if ok else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser("python benchmarks/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=BENCH_DIR, help="results folder (benchmarks/)")
    for flag, text in (("--eigen", "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0): the 'before' column"),
                       ("--tiny", "base-2 network, two repetitions"),
                       ("--render", "measure nothing, re-render"),
                       ("--no-readme", "leave README.md alone")):
        ap.add_argument(flag, action="store_true", help=text)
    ap.add_argument("--job", type=Path, metavar="JOB_JSON",
                    help="measure nothing: add a make-all run's job.json, re-render")
    ap.add_argument("--recipe", nargs=2, metavar=("RUN", "LABEL"),
                    help="measure nothing: add a trained run's out-of-fold Dice, re-render")
    ap.add_argument("--only", type=lambda s: s.split(","), default=(), metavar="KEY,...",
                    help="measure these tasks only (e.g. native,cli), keep the column's others")
    ap.add_argument("--quiet-wait", type=float, default=240.0, metavar="S",
                    help="wait up to S s in all for an idle CPU")
    args = ap.parse_args(argv)
    results = json.loads(path.read_text()) if (path := args.out / "results.json").exists() else None
    if ((args.render or args.job) and results is None) or (args.job and not args.job.is_file()):
        print(f"error: needs {path}" + (f" and {args.job}" if args.job else "") + "; a run of "
              "benchmarks/run.py that measures writes the former.", file=sys.stderr)
        return 2
    if args.job:
        job, args.render = json.loads(args.job.read_text()), True
        kind = "avx512" if job["cpu"]["avx512"] else "avx2"
        old = (results.get("job") or {}).get("make_all") or {}
        results["job"] = {"make_all": {**old, kind: {**job, "run": args.job.parent.name}}}
    if args.recipe:
        run, args.render = Path(args.recipe[0]), True
        results["recipes"] = {**(results.get("recipes") or {}), args.recipe[1]: render.recipe_row(
            *(json.loads((run / f).read_text()) for f in ("manifest.json", "evaluation.json")))}
    if not args.render:
        cpu = cpu_info()          # the column: the CPU's own kind (an emulation did not match)
        isa = ("avx512" if "avx512f" in cpu["flags"] else "avx2") + "_eigen" * args.eigen
        ref = reference_info()
        entry = measure(isa, args.tiny, 0 if args.tiny else args.quiet_wait, ref, args.only)
        if args.only and isa in (results or {}).get("isa", {}):     # the column's other tasks
            entry["tasks"] = {**results["isa"][isa]["tasks"], **entry["tasks"]}
        entry["checks"] = render.checks(entry, ref)
        entry["machine"] = {"cpu": cpu, "python": platform.python_version(),
                            **{pkg: version(pkg) for pkg in ("tensorflow", "keras", "numpy")}}
        results = {"schema": SCHEMA, "isa": {**merge(results, isa, args.tiny), isa: entry},
                   "reference": {k: v for k, v in ref.items() if k not in ("split", "model_path")},
                   **{k: (results or {}).get(k) for k in ("job", "recipes")}}
    gpu = BENCH_DIR / "gpu_results.json"
    results["gpu"] = json.loads(gpu.read_text()) if gpu.exists() else results.get("gpu")
    readme = None if args.no_readme or args.tiny else REPO_ROOT / "README.md"
    print("\n".join(f"wrote {p}" for p in render.write_all(results, args.out, readme)))
    if args.render:
        return 0
    if failed := [k for k, (ok, _) in entry["checks"].items() if not ok]:
        print(f"[bench {isa}] checks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if entry["errors"] or (failed and not args.tiny) else 0


if __name__ == "__main__":
    sys.exit(main())
