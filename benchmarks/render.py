"""``results.json`` -> README's bench block, RESULTS.md and scaling.png (no TensorFlow needed)."""

import contextlib
import functools
import json
import operator
from pathlib import Path

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
JOB_START, JOB_END = "<!-- job:start -->", "<!-- job:end -->"   # beside the two commands
CONTENDED_CORES = 0.15  # a measurement beside other processes using more is flagged
HEADROOM_MIN, MEMORY_TARGET_MIB = 5.0, 4096.0
#: The columns of results.json (run.ISA_ENV), in the order the tables show them.
ISA_LABEL = {"avx512": "AVX-512", "avx2": "AVX2 only",
             "avx2_eigen": "AVX2 only, oneDNN off (before)", "avx512_eigen": "AVX-512, oneDNN off"}
#: The columns of the summary, and the ratios beside them: (label, slower, faster column).
SUMMARY_COLUMNS = ("avx512", "avx2", "avx2_eigen")
RATIOS = (("AVX2 / AVX-512 time", "avx2", "avx512"),
          ("before / after (AVX2)", "avx2_eigen", "avx2"))

_t = lambda s: f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"  # noqa: E731
_mib = lambda v: f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"  # noqa: E731
_pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
_ok = lambda passed: "✓" if passed else "✗"  # noqa: E731
#: The ISAs among ``keys`` that results.json has a column of, in ISA_LABEL's order.
columns = lambda results, keys=tuple(ISA_LABEL): [  # noqa: E731
    k for k in ISA_LABEL if k in results["isa"] and k in keys]
_table = lambda header, rows: [  # noqa: E731  (a Markdown table)
    "| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header),
    *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def _measured(e: dict) -> dict:
    """The tasks of one ISA that ran (not skipped or failed); a ``cli`` measured before the
    command had ``--runtime`` ran on TensorFlow: it is shown as ``cli_tensorflow``."""
    t = {k: v for k, v in e["tasks"].items() if v and "skipped" not in v}
    if "runtime" not in t.get("cli", {"runtime": None}):
        t.setdefault("cli_tensorflow", t.pop("cli"))
    return t


def fmt_s(t) -> str:
    """'0.781 s (0.765–0.791, n=5)' from a tasks.summarise() dict."""
    unit, k = ("ms", 1e3) if t["median"] < 0.1 else ("s", 1.0)
    return f"{t['median'] * k:.3g} {unit} ({t['min'] * k:.3g}–{t['max'] * k:.3g}, n={t['n']})"


#: Summary and check figures, in order: name -> its keys in the tasks, or f(numbers so far, tasks).
FIGURES = {
    "ceil_f32": "ceiling f32_gflops", "ceil_bf16": "ceiling bf16_gflops",
    "row_f32": lambda n, t: next(x for x in t["train_f32"]["rows"] if x["batch"] == n["batch"]),
    "row_bf16": lambda n, t: next(x for x in t["train_bf16"]["rows"] if x["batch"] == n["batch"]),
    "step": lambda n, t: n["row_f32"]["step_s"]["median"],
    "step_gflops": lambda n, t: n["row_f32"]["gflop_per_step"] / n["step"],
    "consume": lambda n, t: n["batch"] / n["step"],
    "step_bf16": lambda n, t: n["row_bf16"]["step_s"]["median"], "epoch": "epoch epoch_s median",
    "overhead": "epoch overhead_s median", "steps_per_epoch": "epoch steps_per_epoch",
    "mem_train": "epoch peak_rss_mib", "augment": "epoch pipeline augment_samples_per_s",
    "dice_bf16": "inference_bf16 mean_test_dice",
    "headroom": lambda n, t: n["augment"] / n["consume"],
    "compiled": "inference_f32 compiled_s median", "predict": "inference_f32 predict_s median",
    "tta": "inference_f32 tta8_s median", "dice_f32": "inference_f32 mean_test_dice",
    "compiled_bf16": "inference_bf16 compiled_s median", "flops": "train_f32 forward_flops",
    "infer_frac": lambda n, t: n["flops"] / n["compiled"] / 1e9 / n["ceil_f32"],
    "infer_frac_bf16": lambda n, t: n["flops"] / n["compiled_bf16"] / 1e9 / n["ceil_bf16"],
    "native": "native stages_s total median", "native_tta": "native tta8_total_s median",
    "native_shape": lambda n, t: "×".join(map(str, t["native"]["shape"])),
    "cli": "cli wall_s median", "cli_scan": "cli scan median", "cli_load": "cli model_load median",
    "cli_startup": lambda n, t: n["cli"] - n["cli_scan"], "cli_tf": "cli_tensorflow wall_s median",
    "cli_tf_scan": "cli_tensorflow scan median", "cli_tf_load": "cli_tensorflow model_load median",
    "cli_tf_startup": lambda n, t: n["cli_tf"] - n["cli_tf_scan"],
    "folder_first": "cli_folder scan median", "folder_later": "cli_folder later_scan median",
    "viewer_first": "viewer first_s", "viewer_again": "viewer again_s median",
    "mem_infer": lambda n, t: max(t[k]["peak_rss_mib"] for k in ("inference_f32", "native")
                                  if k in t)}


def numbers(entry: dict, ref: dict) -> dict:
    """FIGURES of one ISA's results; a figure whose measurement is missing is left out."""
    n, t = {"batch": int(ref["settings"]["batch_size"])}, _measured(entry)
    for name, fn in FIGURES.items():
        with contextlib.suppress(KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError):
            n[name] = (functools.reduce(operator.getitem, fn.split(), t) if isinstance(fn, str)
                       else fn(n, t))
    return n


def checks(entry: dict, ref: dict) -> dict:
    n, memory = numbers(entry, ref), lambda v: [v < MEMORY_TARGET_MIB, f"{_mib(v)} (< 4 GiB)"]
    return {name: rule(n[key]) if key in n else [False, "not measured"] for name, key, rule in (
        ("pipeline_headroom", "headroom", lambda v: [v >= HEADROOM_MIN,
                                                     f"{v:.1f}× (≥ {HEADROOM_MIN:.0f}×)"]),
        ("training_memory", "mem_train", memory), ("inference_memory", "mem_infer", memory))}


def _cell(fn, *args) -> str:
    with contextlib.suppress(KeyError, IndexError, TypeError, ZeroDivisionError):
        return fn(*args)
    return "–"


def summary(results: dict) -> list[str]:
    """The summary table (a column per measured SUMMARY_COLUMNS, then the RATIOS) and notes."""
    ref, isas = results["reference"], columns(results, SUMMARY_COLUMNS)
    b = ref["settings"]["batch_size"]
    rows = [  # label, cell from numbers(), the figure whose ratio to show (a time; "1/" a speed)
        ("**Machine ceiling** (large matrix product), float32",
         lambda n: f"{n['ceil_f32']:.0f} GFLOP/s", "1/ceil_f32"),
        ("Machine ceiling, bfloat16", lambda n: f"{n['ceil_bf16']:.0f} GFLOP/s", "1/ceil_bf16"),
        (f"**Training** step, reference settings (batch {b}, float32)",
         lambda n: f"{_t(n['step'])} = {n['step_gflops']:.0f} GFLOP/s "
                   f"({_pct(n['step_gflops'] / n['ceil_f32'])} of the ceiling)", "step"),
        ("An epoch with validation (measured)",
         lambda n: f"{_t(n['epoch'])} ({n['steps_per_epoch']} steps)", "epoch"),
        (f"bfloat16 training step (batch {b})", lambda n: f"{_t(n['step_bf16'])} "
         f"({n['step'] / n['step_bf16']:.2f}× float32's speed)", "step_bf16"),
        ("**Inference**, one 64³ volume: compiled call vs `model.predict`",
         lambda n: f"{_t(n['compiled'])} ({_pct(n['infer_frac'])} of the ceiling) vs "
                   f"{_t(n['predict'])}", "compiled"),
        ("bfloat16 inference (compiled), test Dice float32 → bfloat16",
         lambda n: f"{_t(n['compiled_bf16'])} ({_pct(n['infer_frac_bf16'])} of the bf16 "
                   f"ceiling), Dice {n['dice_f32']:.4f} → {n['dice_bf16']:.4f}", "compiled_bf16"),
        ("8-flip TTA, one volume", lambda n: _t(n["tta"]), "tta"),
        ("**A native scan end to end** (load, model grid, predict, back, refine, save), without "
         "/ with TTA", lambda n: f"{_t(n['native'])} / {_t(n['native_tta'])} "
         f"({n['native_shape']} voxels)", "native"),
        ("**Inference command** on that scan, a fresh process (OpenVINO, the model exported "
         "once): in all (start-up before the scan, of which loading the model; the scan itself)",
         lambda n: f"{_t(n['cli'])} ({_t(n['cli_startup'])}, {_t(n['cli_load'])}; "
                   f"{_t(n['cli_scan'])})", "cli"),
        ("The same on TensorFlow (`--runtime tensorflow`, the model not exported)",
         lambda n: f"{_t(n['cli_tf'])} ({_t(n['cli_tf_startup'])}, {_t(n['cli_tf_load'])}; "
                   f"{_t(n['cli_tf_scan'])})", "cli_tf"),
        ("**Folder mode**, one process over the native scans: the first scan / each later one",
         lambda n: f"{_t(n['folder_first'])} / {_t(n['folder_later'])}", "folder_later"),
        ("**Viewer app**, *segment* on that scan: the first press / each later one",
         lambda n: f"{_t(n['viewer_first'])} / {_t(n['viewer_again'])}", "viewer_again"),
        ("**Peak memory**, training (reference settings) / inference (target < 4 GiB each)",
         lambda n: f"{_mib(n['mem_train'])} {_ok(n['mem_train'] < MEMORY_TARGET_MIB)} / "
                   f"{_mib(n['mem_infer'])} {_ok(n['mem_infer'] < MEMORY_TARGET_MIB)}", None),
        (f"**Input pipeline**: augmentation vs the network, samples/s (headroom ≥ "
         f"{HEADROOM_MIN:.0f}×)", lambda n: f"{n['augment']:.1f} vs {n['consume']:.2f} = "
         f"{n['headroom']:.1f}× {_ok(n['headroom'] >= HEADROOM_MIN)}", None)]
    nums = {k: numbers(results["isa"][k], ref) for k in isas}
    ratios = [(label, nums[a], nums[b]) for label, a, b in RATIOS if a in nums and b in nums]
    ratio = lambda x, slow, fast: fast[x[2:]] / slow[x[2:]] if x[:2] == "1/" else slow[x] / fast[x]
    header = ["", *(f"{ISA_LABEL[k]} ({results['isa'][k]['created'][:10]})" for k in isas),
              *(label for label, *_ in ratios)]
    out = _table(header, [[label, *(_cell(fn, nums[k]) for k in isas), *(_cell(
        lambda: f"{ratio(key, slow, fast):.2f}×") if key else "" for _, slow, fast in ratios)]
        for label, fn, key in rows]) + [""]
    out += [f"- {job}"] if (job := job_line(results)) else []
    for k, e in ((k, results["isa"][k]) for k in columns(results)):
        busy = ", ".join(f"{t} {v['other_load_cores']:.2f}" for t, v in e["tasks"].items()
                         if (v.get("other_load_cores") or 0) > CONTENDED_CORES)
        out += [f"- ⚠ {ISA_LABEL[k]}: {note}." for cond, note in [
            (e["tiny"], "**tiny run** (base 2, two repetitions): checks the code, not the speed"),
            (busy, f"measured beside other jobs (cores they used): {busy}"),
            (e["errors"], f"failed: {', '.join(e['errors'])}")] if cond]
    return out


def machines(results: dict, keys=tuple(ISA_LABEL)) -> str:
    return "; ".join(
        f"{ISA_LABEL[k]}: {cpu.get('model') or 'unknown CPU'}, {cpu.get('logical_cpus')} logical "
        f"CPUs, {cpu.get('memory_gib', '?')} GiB, flags {' '.join(cpu.get('flags') or ['?'])}; "
        f"TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, NumPy {m.get('numpy')}"
        for k in columns(results, keys)
        for m in [results["isa"][k]["machine"]] for cpu in [m["cpu"]])


def readme_block(results: dict) -> str:
    return "\n".join([f"Measured by `make bench` (2 cores, no GPU) on "
                      f"{machines(results, SUMMARY_COLUMNS)}:", "", *summary(results), "",
                      "Details, spreads, scaling and how each number is measured: "
                      "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)."])


def job_line(results: dict) -> str:
    """`make all` from a fresh clone per CPU kind (run.py --job); "" if never measured."""
    jobs = (results.get("job") or {}).get("make_all") or {}
    return jobs and ("**`make all` from a fresh clone** (its `job.json`; runs before 2026-12-06 "
                     "trained the former main profile, 10 min a member): " + ", ".join(
                         f"{v['wall_s'] / 60:.0f} min on {ISA_LABEL[k]} ({v['cpu']['model']}, "
                         f"{v['cpu']['logical_cpus']} cores, {v['finished'][:10]})"
                         for k, v in sorted(jobs.items())) + ".")


def update_readme(path, results: dict) -> bool:
    """Replace README's bench block (and job line, if marked); False (no change) if unmarked."""
    text = Path(path).read_text()
    if README_START not in text or README_END not in text:
        return False
    for start, end, block in ((README_START, README_END, readme_block(results)),
                              (JOB_START, JOB_END, job_line(results))):
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{block}\n{end}" + rest.split(end, 1)[1]
    Path(path).write_text(text)
    return True


def _details(e: dict, ref: dict) -> dict:
    t, n, d = _measured(e), numbers(e, ref), {}
    for k, v in t.get("ceiling", {}).get("runs", {}).items():
        d[f"Ceiling: {k}, n = {v['n']} (best, median)"] = (
            f"{v['gflops_best']:.0f}, {v['gflops_median']:.0f} GFLOP/s")
    for k, s, r in ((k, v, r) for k, v in t.items() if k.startswith(("train_", "scale_"))
                    for r in v["rows"]):   # in the plan's order
        g, ceil = r["gflop_per_step"] / r["step_s"]["median"], n.get(f"ceil_{s['precision']}")
        d[f"Training step: {s['precision']}, {s['size']}³, batch {r['batch']}"
          + (", Keras's GroupNormalization (before)" if k.endswith("keras_norm") else "")] = (
            f"{fmt_s(r['step_s'])}; {g:.0f} GFLOP/s" + (f" ({_pct(g / ceil)})" if ceil else "")
            + f"; {_mib(r['peak_rss_mib'])}")
    if "epoch" in t:
        ep, p, w = t["epoch"], t["epoch"]["pipeline"], "`train.train`:"
        d.update({f"{w} epoch ({ep['steps_per_epoch']} steps, after "
                  f"{len(ep['warmup_epochs_s'])} warm-up)": fmt_s(ep["epoch_s"]),
                  f"{w} a step as `fit` runs it": fmt_s(ep["fit_step_s"]),
                  f"{w} validation": fmt_s(ep["val_s"]),
                  f"{w} an epoch beyond its steps": fmt_s(ep["overhead_s"]),
                  f"{w} peak memory": _mib(ep["peak_rss_mib"]),
                  f"Augmentation, an epoch of {p['samples_per_epoch']} samples (one thread)":
                  f"{fmt_s(p['augment_epoch_s'])} = {p['augment_samples_per_s']:.1f} samples/s"})
    for w, i in ((f"Inference {p}:", t[f"inference_{p}"]) for p in ("f32", "bf16")
                 if t.get(f"inference_{p}")):
        cases = ", ".join(f"{c} {v:.4f}" for c, v in i["test_cases"].items())
        d.update({f"{w} `model.predict`": fmt_s(i["predict_s"]),
                  f"{w} compiled call": fmt_s(i["compiled_s"]),
                  f"{w} 8-flip TTA": fmt_s(i["tta8_s"]),
                  f"{w} test Dice" + ("" if i["trained"] else " (untrained)"):
                  f"{i['mean_test_dice']:.4f} ({cases})",
                  f"{w} peak memory": _mib(i["peak_rss_mib"])})
    if nat := t.get("native"):
        w = "Native scan:"
        d.update({"Native scan end to end": f"{nat['case_id']}, {n['native_shape']} voxels of "
                  f"{' × '.join(f'{v:.3g}' for v in nat['spacing_mm'])} mm",
                  **{f"{w} {k.replace('_', ' ')}": fmt_s(v) for k, v in nat["stages_s"].items()},
                  f"{w} total with 8-flip TTA": fmt_s(nat["tta8_total_s"]),
                  f"{w} peak memory without / with TTA":
                  f"{_mib(nat['peak_rss_mib_no_tta'])} / {_mib(nat['peak_rss_mib'])}"})
        if "ensemble_total_s" in nat:
            ens, one = nat["ensemble_total_s"], nat["stages_s"]["total"]
            d[f"{w} ensemble of {nat['ensemble_members']} (the command's runtime) vs member 0"] = (
                f"{fmt_s(ens)} vs {fmt_s(one)} ({ens['median'] / one['median']:.2f}×), Dice "
                f"{nat['dice_ensemble']:.4f} vs {nat['dice_single']:.4f}")
        if "ensemble_bf16_total_s" in nat:
            d[f"{w} the ensemble in bfloat16"] = (
                f"{fmt_s(nat['ensemble_bf16_total_s'])}, Dice {nat['dice_ensemble_bf16']:.4f}")
    for w, c in (("Inference command", t.get("cli")), ("Inference command on TensorFlow",
                 t.get("cli_tensorflow")), ("Folder mode", t.get("cli_folder"))):
        d.update({f"{w} (a fresh process, default model): in all": fmt_s(c["wall_s"]), **{
            f"{w}: {k.replace('_', ' ')}": fmt_s(c[k]) for k in (
                "keras_import", "model_load", "scan", "later_scan") if k in c},
            **({f"{w}: Dice of its mask": f"{c['dice']:.4f}"} if "dice" in c else {})} if c else {})
    if v := t.get("viewer"):
        d["Viewer app: segment, the first press / the later ones"] = (
            f"{v['first_s']:.2f} s / {fmt_s(v['again_s'])}")
    d.update({f"`{k}`": f"not measured: {v['skipped']}" for k, v in e["tasks"].items()
              if "skipped" in v} | {f"`{k}`": "failed: " + (v.strip().splitlines() or [""])[-1]
                                    for k, v in e["errors"].items()})
    d["Cores used by other processes meanwhile"] = ", ".join(
        f"{k} {v['other_load_cores']:.2f}" for k, v in t.items()
        if v.get("other_load_cores") is not None) or "–"
    d["Checks"] = "; ".join(f"{k.replace('_', ' ')} {v[1]} {_ok(v[0])}"
                            for k, v in checks(e, ref).items())
    env = " ".join(f"{k}={v}" for k, v in e["env"].items()) or "no cap"
    return {**d, "Measured (environment)": f"{e['created']}, {e['wall_s'] / 60:.1f} min, waited "
            f"{e['waited_s']:.0f} s for an idle CPU ({env})"}


def recipe_row(manifest: dict, evaluation: dict) -> dict:
    """A trained ensemble's size and out-of-fold Dice (notebook 05's evaluation.json) per grid."""
    dice = lambda b, k: b["summary"]["unet"]["dice"][k]  # noqa: E731
    return {"members": len(manifest["members"]), "epochs": manifest["settings"]["epochs"],
            "dice": {g: [dice(b, "mean"), dice(b, "worst_value"), [r["case_id"] for r in b["cases"]
                     if r["unet"]["dice"] < r["baseline"]["dice"]]] for g, b in evaluation.items()
                     if g in ("grid64", "native")}}


def recipe_table(results: dict) -> list[str]:
    """The recipe runs (run.py --recipe): out-of-fold Dice against members x epochs (time)."""
    rows = [[label, f"{r['members']} × {r['epochs']}", *(f"{m:.4f} ({w:.4f})" for m, w, _ in
             r["dice"].values()), ", ".join(sorted({c for *_, b in r["dice"].values() for c in b}))
             or "none"] for label, r in (results.get("recipes") or {}).items()]
    return rows and ["## Recipes: out-of-fold Dice against training time", "", *_table(
        ["", "members × epochs", "64³: mean (worst)", "native: mean (worst)", "below the "
         "classical baseline"], rows), ""]


def results_markdown(results: dict) -> str:
    isas = columns(results)
    cols = [_details(results["isa"][k], results["reference"]) for k in isas]
    rows = [[what, *(c.get(what, "–") for c in cols)] for what in dict.fromkeys(
        what for c in cols for what in c)]
    g = results.get("gpu")
    return "\n".join([
        "# Benchmarks", "", "Generated from results.json by `python benchmarks/run.py` "
        f"(`make bench`; `--eigen` for a column with oneDNN off). Machines: {machines(results)}. "
        "Do not edit: re-run the command. How each number is measured: [README.md](README.md).",
        "", "## Summary", "", *summary(results), "", *recipe_table(results),
        "## Every measurement", "",
        "Timings: median (min–max, n repetitions) after a warm-up. Training steps: "
        "`train_on_batch`, GFLOP/s = 3 × forward FLOPs × batch / step (share of the ceiling of "
        "its precision), peak memory.", "", *_table(["", *(ISA_LABEL[k] for k in isas)], rows),
        "", "![scaling](scaling.png)", "", "## GPU", "", f"`gpu.py` on {g['device']} (Keras "
        f"{g['keras']}, JAX): training step {fmt_s(g['train_step_s'])}, inference "
        f"{fmt_s(g['inference_s'])}, 8-flip TTA {fmt_s(g['tta8_s'])}." if g else
        "`gpu.py` (KERAS_BACKEND=jax) has not run on a GPU yet.", ""])


def plot_scaling(results: dict, path) -> Path:
    """Training step time against input size (batch 1) and batch (64³), one line per ISA."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state to manage
    axes = (fig := Figure(figsize=(8, 3.2))).subplots(1, 2)
    for isa, style in (("avx512", "-"), ("avx2", "--"), ("avx2_eigen", ":")):
        t = _measured(results["isa"][isa]) if isa in results["isa"] else {}
        by_size = sorted((v["size"], v["rows"][0]["step_s"]["median"]) for k, v in t.items()
                         if k.startswith(("scale_", "train_f32")) and v["rows"][0]["batch"] == 1)
        for ax, prec, pts in [(axes[0], "f32", by_size)] + [
                (axes[1], p, [(r["batch"], r["step_s"]["median"]) for r in t[f"train_{p}"]["rows"]])
                for p in ("f32", "bf16") if f"train_{p}" in t]:
            if pts:
                ax.plot(*zip(*pts), style, marker="o", label=f"{ISA_LABEL[isa]} {prec}",
                        color={"f32": "#0072B2", "bf16": "#D55E00"}[prec])
    for ax, xlabel in zip(axes, ("input edge (voxels), batch 1", "batch size (64³)")):
        ax.set(xlabel=xlabel, ylabel="training step (s)", ylim=(0, None))
        ax.locator_params(axis="x", integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("lungseg training step, 2 cores (each line: its own machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return Path(path)


def write_all(results: dict, out_dir: Path, readme: Path | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (tmp := out_dir / "results.tmp").write_text(json.dumps(results, indent=1, default=float) + "\n")
    paths = [tmp.replace(out_dir / "results.json"), out_dir / "RESULTS.md"]
    paths[1].write_text(results_markdown(results) + "\n")
    paths.append(plot_scaling(results, out_dir / "scaling.png"))
    return paths + [readme] if readme is not None and update_readme(readme, results) else paths
