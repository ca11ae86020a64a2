"""Turn ``benchmarks/results.json`` into RESULTS.md, README's summary and scaling.png.

Everything here reads the results dictionary only (no measuring, no TensorFlow), so the
documents can be re-rendered at any time with ``python benchmarks/run.py --readme``.
"""

from __future__ import annotations

import re
from pathlib import Path

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"

#: Keys that every results.json has (checked by tests/test_benchmarks.py).
REQUIRED_KEYS = ("schema", "created", "machine", "ceiling", "training", "pipeline", "inference",
                 "native", "scaling", "ratios", "time_to_dice", "memory", "job", "gpu", "errors")


def validate_results(results: dict) -> list[str]:
    """Problems with a results.json object (an empty list if it has the expected shape)."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in results]
    if problems:
        return problems
    if not results["schema"].startswith("lungseg-bench/"):
        problems.append(f"unknown schema {results['schema']!r}")
    ceil = results["ceiling"] or {}
    for k in ("f32_gflops", "bf16_gflops"):
        if not (isinstance(ceil.get(k), (int, float)) and ceil[k] > 0):
            problems.append(f"ceiling.{k} is not a positive number")
    for row in results["training"]:
        for k in ("config", "precision", "batch", "step_s", "gflops", "peak_rss_mib"):
            if k not in row:
                problems.append(f"training row without {k!r}")
        t = row.get("step_s") or {}
        if not (t.get("min", 0) <= t.get("median", -1) <= t.get("max", -2)):
            problems.append(f"training row {row.get('config')}/{row.get('batch')}: bad spread")
    for prec, inf in (results["inference"] or {}).items():
        for k in ("predict_s", "compiled_s", "tta8_s", "mean_test_dice"):
            if k not in inf:
                problems.append(f"inference.{prec} without {k!r}")
    mem = results["memory"] or {}
    for k in ("target_mib", "training_quick_profile_mib", "inference_mib"):
        if k not in mem:
            problems.append(f"memory without {k!r}")
    return problems


# --------------------------------------------------------------------------- formatting


def fmt_s(t, digits: int = 3) -> str:
    """'0.312 s (0.305–0.330, n=5)' from a summarise() dict; '–' for None."""
    if not t:
        return "–"
    med = t["median"]
    unit, k = ("ms", 1e3) if med < 0.1 else ("s", 1.0)
    f = lambda v: f"{v * k:.{digits}g}"  # noqa: E731
    if t.get("n", 1) > 1:
        return f"{f(med)} {unit} ({f(t['min'])}–{f(t['max'])}, n={t['n']})"
    return f"{f(med)} {unit} (n=1)"


def fmt_med(t) -> str:
    if not t:
        return "–"
    return f"{t['median'] * 1e3:.0f} ms" if t["median"] < 1 else f"{t['median']:.2f} s"


def _num(v, fmt="{:.0f}", none="–"):
    return none if v is None else fmt.format(v)


def _pct(v):
    return "–" if v is None else f"{100 * v:.0f} %"


def _x(v):
    return "–" if v is None else f"{v:.2f}×"


def _mib(v):
    return "–" if v is None else f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _machine_line(r) -> str:
    m = r["machine"]
    bf16 = "AMX-BF16" if m.get("amx_bf16") else "AVX512-BF16" if m.get("avx512_bf16") else "no bf16 units"
    return (f"{m.get('model') or 'unknown CPU'}, {m.get('logical_cpus')} logical CPUs, "
            f"{m.get('memory_gib', '?')} GiB, {bf16}; TensorFlow {m.get('tensorflow')}, "
            f"Keras {m.get('keras')}, NumPy {m.get('numpy')}")


# --------------------------------------------------------------------------- summary


def _find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def summary_lines(r: dict) -> list[str]:
    """The key numbers, as Markdown bullet lines (README summary and top of RESULTS.md)."""
    out = []
    c = r["ceiling"] or {}
    out.append(f"- **Machine ceiling** (large matrix product): {_num(c.get('f32_gflops'))} GFLOP/s "
               f"float32, {_num(c.get('bf16_gflops'))} GFLOP/s bfloat16.")
    ref = r["configs"]["reference"]["settings"]
    prec = "bf16" if ref.get("mixed_precision") else "f32"
    tr = _find(r["training"], config="reference", precision=prec, batch=int(ref["batch_size"]))
    ep = r.get("epoch") or {}
    if tr:
        out.append(f"- **Training** (reference settings, batch {tr['batch']}, {prec}): "
                   f"{fmt_med(tr['step_s'])} a step = {tr['gflops']:.0f} GFLOP/s "
                   f"({_pct(tr['fraction_of_ceiling'])} of the ceiling); an epoch of "
                   f"{tr['steps_per_epoch']} steps with validation {fmt_med(ep.get('epoch_s'))} (measured).")
    tb = _find(r["training"], config="original", precision="bf16", batch=2)
    tf = _find(r["training"], config="original", precision="f32", batch=2)
    if tb and tf:
        out.append(f"- bfloat16 training step: {fmt_med(tb['step_s'])} vs {fmt_med(tf['step_s'])} "
                   f"float32 ({_x(tf['step_s']['median'] / tb['step_s']['median'])}).")
    inf = r["inference"] or {}
    if "f32" in inf:
        i32, i16 = inf["f32"], inf.get("bf16")
        line = (f"- **Inference**, one 64³ volume: compiled call {fmt_med(i32['compiled_s'])} "
                f"float32 ({_pct(i32['fraction_of_ceiling'])} of the ceiling) vs "
                f"`model.predict` {fmt_med(i32['predict_s'])}")
        if i16:
            line += (f"; bfloat16 {fmt_med(i16['compiled_s'])} ({_pct(i16['fraction_of_ceiling'])} "
                     f"of the bf16 ceiling), test Dice {i32['mean_test_dice']:.4f} → "
                     f"{i16['mean_test_dice']:.4f}")
        out.append(line + f"; 8-flip TTA {fmt_med(i32['tta8_s'])}.")
    nat = r.get("native") or {}
    if nat.get("stages_s"):
        out.append(f"- **A native scan end to end** ({'×'.join(map(str, nat['shape']))} voxels: "
                   f"load, model grid, predict, back, refine, save): {fmt_med(nat['stages_s']['total'])}; "
                   f"with TTA {fmt_med(nat['tta8_total_s'])}.")
    m = r["memory"] or {}
    ok = lambda b: "✓" if b else "✗ over"  # noqa: E731
    out.append(f"- **Peak memory** (target < 4 GiB each): training (quick profile) "
               f"{_mib(m.get('training_quick_profile_mib'))} {ok(m.get('training_ok'))}, "
               f"inference {_mib(m.get('inference_mib'))} {ok(m.get('inference_ok'))}.")
    ttd = r.get("time_to_dice") or {}
    sp = ttd.get("speedup")
    if sp:
        reach = ttd.get(f"reach_{ttd['original']['val_dice']}") or {}
        steps = ttd.get("original_steps", {})
        whole = ttd.get("reference_whole_run") or {}
        lo, hi = (steps.get(str(e)) for e in ttd["original"]["epochs"])
        out.append(f"- **Quick profile vs the original**: validation Dice ≥ "
                   f"{ttd['original']['val_dice']} after {reach.get('steps')} steps "
                   f"(epoch {reach.get('epoch')}) instead of the original's {lo}–{hi}: "
                   f"{_x(sp.get('time_80ep'))}–{_x(sp.get('time_150ep'))} less time to the same "
                   f"Dice. The quick profile then trains on to epoch {whole.get('epochs')} "
                   f"({whole.get('steps')} steps) and val Dice "
                   f"{ttd['reference_best_val_dice']:.3f}.")
    job = r.get("job") or {}
    jobs = job.get("jobs") or {}
    if jobs:
        nbs = sorted(k.removeprefix("notebook_") for k in jobs if k.startswith("notebook"))
        total = sum(v.get("wall_s", 0) for k, v in jobs.items() if k.startswith("notebook"))
        test = jobs.get("test", {}).get("wall_s")
        out.append(f"- **The whole job**: "
                   + (f"notebooks {', '.join(nbs)}: {total / 60:.1f} min together"
                      f"{'' if len(nbs) >= 7 else ' (only these were timed by the Makefile so far)'}"
                      if nbs else "no notebook timed yet")
                   + (f"; test suite {test / 60:.1f} min" if test else "") + ".")
    if r.get("tiny"):
        out.insert(0, "- ⚠ **tiny run** (base 2, 1–2 repetitions): checks the code, not the speed.")
    bg = r.get("background") or {}
    busy = (contended_tasks(r) if "other_load_cores" in r else
            any((bg.get(k) or {}).get("busy_processes") for k in ("before", "after")))
    if busy:
        out.insert(0, "- ⚠ Other processes used the CPU during part of this run: those timings "
                      "are slower and noisier than on an idle machine (see RESULTS.md).")
    return out


def readme_summary(r: dict) -> str:
    """The block that goes between README's bench markers."""
    return "\n".join([f"Measured by `make bench` on {_machine_line(r)} ({r['created'][:10]}):", "",
                      *summary_lines(r), "",
                      "Details, spreads, scaling and how each number is measured: "
                      "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)."])


def update_readme(readme_path, results: dict) -> bool:
    """Replace the text between the bench markers of ``readme_path``; False if it has none."""
    path = Path(readme_path)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        print(f"note: {path} has no {README_START} … {README_END} markers; README not updated.")
        return False
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    block = f"{README_START}\n{readme_summary(results)}\n{README_END}"
    path.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


# --------------------------------------------------------------------------- RESULTS.md


def results_markdown(r: dict) -> str:
    """The whole RESULTS.md."""
    s = ["# Benchmarks", "",
         f"Generated by `python benchmarks/run.py` (`make bench`) on {r['created']} in "
         f"{r['bench_wall_s'] / 60:.1f} min. Machine: {_machine_line(r)}. Do not edit: "
         "re-run the command. Timings: median (min–max, n repetitions) after a warm-up. "
         "See [README.md](README.md) for what each number means.", "",
         *_background_md(r), "## Summary", "", *summary_lines(r), ""]
    s += _ceiling_md(r) + _training_md(r) + _pipeline_md(r) + _inference_md(r)
    s += _scaling_md(r) + _ratios_md(r) + _ttd_md(r) + _memory_md(r) + _job_md(r) + _gpu_md(r)
    if r.get("errors"):
        s += ["## Errors", ""] + [f"- `{k}`: {v.strip().splitlines()[-1] if v.strip() else v}"
                                  for k, v in r["errors"].items()] + [""]
    return "\n".join(s) + "\n"


CONTENDED_CORES = 0.15


def contended_tasks(r: dict) -> dict:
    """Tasks during which other processes used more than CONTENDED_CORES cores on average."""
    return {k: v for k, v in (r.get("other_load_cores") or {}).items()
            if v is not None and v > CONTENDED_CORES}


def _background_md(r):
    bg = r.get("background") or {}
    busy = [b for k in ("before", "after") for b in (bg.get(k) or {}).get("busy_processes", [])]
    loads = r.get("other_load_cores") or {}
    out = []
    if bg.get("waited_for_quiet_s"):
        out += [f"The run waited {bg['waited_for_quiet_s']:.0f} s in all for other processes to "
                "leave the CPU idle before its measurements.", ""]
    if loads:
        hit = contended_tasks(r)
        worst = max(loads.values()) if loads else 0.0
        out += [("**Other load while measuring**: " + ", ".join(
            f"`{k}` {v:.2f} cores" for k, v in hit.items()) + " (CPU used by other processes, "
            "on average over the task): those timings are slower and noisier than on an idle "
            "machine.") if hit else
            f"Other processes used at most {worst:.2f} cores during any measurement.", ""]
    if not busy:
        return out
    out_busy = _busy_lines(busy)
    return out + out_busy


def _busy_lines(busy):
    seen, lines = set(), []
    for b in busy:
        if b["command"] not in seen:
            seen.add(b["command"])
            lines.append(f"`{b['command'][:80]}` (nice {b['nice']}, {b['cpu_percent']} % CPU)")
    return ["Busy processes seen just before or after the run: " + "; ".join(lines) + ".", ""]


def _ceiling_md(r):
    c = r["ceiling"] or {}
    runs = c.get("runs", {})
    rows = [[k, v["n"], v["dtype"], f"{v['gflops_best']:.0f}", f"{v['gflops_median']:.0f}",
             fmt_s(v["time"])] for k, v in runs.items()]
    out = ["## The machine's ceiling", "",
           "An n × n by n × n matrix product (2n³ FLOP): NumPy's BLAS and `tf.linalg.matmul` "
           "(oneDNN). The best of each precision is the ceiling every other figure is a "
           "fraction of.", "",
           _table(["library", "n", "dtype", "GFLOP/s best", "GFLOP/s median", "time"], rows), ""]
    fc = c.get("flops_check")
    if fc:
        out += ["### FLOP count check", "",
                f"`model.count_flops` of the network at {fc['input_size']}³, batch 1: "
                f"**{fc['count_flops'] / 1e9:.3f} GFLOP**; TensorFlow's profiler "
                f"(`tf.compat.v1.profiler`, float_operation, on the concrete function's graph): "
                f"**{fc['tf_profiler_total'] / 1e9:.3f} GFLOP** "
                f"({100 * (fc['count_flops'] / fc['tf_profiler_total'] - 1):+.1f} %). The "
                f"convolutions alone agree exactly: {fc['conv3d_analytic']:,} analytic vs "
                f"{fc['tf_profiler_conv3d']:,} profiler FLOP "
                f"({'match' if fc['conv3d_match'] else 'MISMATCH'}); the rest is normalisation "
                "and element-wise ops, which count_flops estimates (8 per element for a "
                "normalisation) and the profiler partly ignores (it has no entry for MaxPool3D, "
                "Relu or Sigmoid). A training step is taken as 3 forward passes.", ""]
    return out


def _training_md(r):
    rows = []
    for t in r["training"]:
        rows.append([t["config"] + (" ★" if t.get("is_profile_setting") else ""), t["precision"],
                     t["batch"], fmt_s(t["step_s"]), f"{t['samples_per_s']:.2f}",
                     f"{t['gflops']:.0f}", _pct(t["fraction_of_ceiling"]), t["steps_per_epoch"],
                     f"{t['epoch_s_est']:.1f} s", _mib(t["peak_rss_mib"])])
    ep = r.get("epoch") or {}
    ref = r["configs"]["reference"]["settings"]
    out = ["## Training", "",
           f"`train_on_batch` on real cases, deterministic ops on (as `train.train`). "
           f"**reference**: {r['configs']['reference']['source']} (base {ref['base_filters']}, "
           f"batch {ref['batch_size']}, {ref.get('samples_per_epoch')} samples an epoch, "
           f"{'mixed bfloat16' if ref.get('mixed_precision') else 'float32'}); **original**: base 16, "
           "float32, batch 2, 7 cases an epoch. When both have the same network, one measurement "
           "serves both rows. ★ = the configuration's own batch and precision. GFLOP/s = 3 × "
           "forward FLOPs × batch / step time, as a fraction of the ceiling of the same precision. "
           "Epoch = steps × step time + the per-epoch overhead measured below (validation, "
           "checkpoint, logs).", "",
           _table(["config", "precision", "batch", "step", "samples/s", "GFLOP/s", "of ceiling",
                   "steps/epoch", "epoch (est.)", "peak RSS"], rows), ""]
    if ep:
        warm = ", ".join(f"{t:.1f}" for t in ep.get("warmup_epochs_s", [ep["first_epoch_s"]]))
        out += [f"A real run (`train.train`, reference settings, {ep['epochs_run']} epochs; the "
                f"first {ep.get('warmup_epochs', 1)} are warm-up — tracing, and a slow first step "
                f"after the first validation — and took {warm} s): epoch "
                f"{fmt_s(ep['epoch_s'])}, of which training steps as `fit` runs them "
                f"{fmt_s(ep['fit_step_s'])} each, validation {fmt_s(ep['val_s'])}, and "
                f"{fmt_s(ep['overhead_s'])} an epoch outside the training steps (validation, "
                f"checkpoint, logs, the first batch's augmentation). Peak memory of this run: "
                f"{_mib(ep['peak_rss_mib'])}.", ""]
        fs = ep["fit_step_s"]
        if fs["max"] > 3 * fs["median"]:
            out += [f"The slowest `fit` step ({fs['max']:.1f} s against a median of "
                    f"{fs['median']:.2f} s) is the first of an epoch: Keras makes a spare input "
                    "iterator at the end of every epoch and drops it at the start of the next, and "
                    "with `workers=1` dropping its prefetching `tf.data` pipeline blocked for "
                    "seconds in some epochs (see benchmarks/README.md, \"Known stall\"). That, not "
                    "the steps, is why the measured epoch exceeds the estimate.", ""]
    return out


def _pipeline_md(r):
    p = r.get("pipeline")
    if not p:
        return []
    head = ", ".join(f"{k} {v:.1f}×" for k, v in p["headroom"].items())
    cons = ", ".join(f"{k} {v:.2f}" for k, v in p["model_consumes_samples_per_s"].items())
    return ["## Input pipeline", "",
            f"The augmentation `PyDataset` (one thread, reference settings: elastic, shift, "
            f"flips, rot90, jitter) makes **{p['augment_samples_per_s']:.1f} samples/s**; the "
            f"model consumes {cons} samples/s (float32, bfloat16) at the reference batch. "
            f"Headroom: {head} (target ≥ 5×). Decoding the {p['n_cases']} training cases from "
            f"NIfTI takes {fmt_s(p['decode_all_cases_s'])} ({p['decode_samples_per_s']:.0f} "
            f"cases/s); augmenting one epoch of {p['samples_per_epoch']} cached samples "
            f"{fmt_s(p['augment_epoch_s'])}.", ""]


def _inference_md(r):
    inf = r["inference"] or {}
    rows = []
    for prec, i in inf.items():
        rows.append([prec, fmt_s(i["predict_s"]), fmt_s(i["compiled_s"]),
                     f"{i['gflops_compiled']:.0f}", _pct(i["fraction_of_ceiling"]),
                     fmt_s(i["tta8_s"]), _pct(i["fraction_of_ceiling_tta8"]),
                     f"{i['mean_test_dice']:.4f}", _mib(i["peak_rss_mib"])])
    out = ["## Inference", "",
           "One 64³ volume (batch 1) through `model.predict` and through "
           "`inference.compiled_forward` (a `tf.function` call), and the 8 flips of TTA as one "
           "batch of 8. bfloat16: the reference weights loaded into a model built under the "
           "`mixed_bfloat16` policy. Dice: the held-out test cases of the reference split, "
           "threshold 0.5, 64³ grid." + ("" if any(i.get("trained") for i in inf.values())
                                         else " (untrained model: Dice meaningless)"), "",
           _table(["precision", "model.predict", "compiled call", "GFLOP/s", "of ceiling",
                   "TTA ×8", "TTA of ceiling", "test Dice", "peak RSS"], rows), ""]
    agree = (inf.get("bf16") or {}).get("agreement_with_f32")
    if agree:
        out += [f"bfloat16 against float32 on the test cases: largest probability difference "
                f"{agree['max_abs_prob_diff']:.4f}, {agree['voxels_changed']} voxels change side "
                f"of 0.5, mask Dice bf16 vs f32 "
                f"{', '.join(f'{d:.4f}' for d in agree['mask_dice_vs_f32'])}.", ""]
    nat = r.get("native") or {}
    if nat.get("stages_s"):
        st = nat["stages_s"]
        out += [f"### A native scan end to end: {nat['case_id']}, "
                f"{'×'.join(map(str, nat['shape']))} voxels of "
                f"{' × '.join(f'{v:.3g}' for v in nat['spacing_mm'])} mm", "",
                _table(["stage", "time"], [[k.replace("_", " "), fmt_s(v)] for k, v in st.items()]),
                "",
                f"With 8-flip TTA: {fmt_s(nat['tta8_total_s'])}. Starting cold costs another "
                f"{nat['import_s']:.1f} s (importing TensorFlow) + {nat['model_load_s']:.1f} s "
                f"(loading the model). Peak memory {_mib(nat['peak_rss_mib_no_tta'])} without "
                f"TTA, {_mib(nat['peak_rss_mib'])} with.", ""]
    return out


def _scaling_md(r):
    sc = r["scaling"]
    rows = [[f"{e['size']}³", e["batch"], fmt_s(e.get("step_s")),
             _num(e.get("gflop_per_step"), "{:.0f}"), _num(e.get("gflops"), "{:.0f}"),
             _mib(e.get("peak_rss_mib")), e.get("note", "")] for e in sc["input_size"]]
    out = ["## Scaling", "", "![scaling](scaling.png)", "",
           "**Input size** (original network, float32, batch 1, training step):", "",
           _table(["input", "batch", "step", "GFLOP/step", "GFLOP/s", "peak RSS", ""], rows), "",
           "**Batch size** (64³, original network):", "",
           _table(["precision", "batch", "step", "samples/s", "peak RSS"],
                  [[e["precision"], e["batch"], fmt_s(e["step_s"]), f"{e['samples_per_s']:.2f}",
                    _mib(e["peak_rss_mib"])] for e in sc["batch"]]), ""]
    if sc["cases_per_epoch"]:
        out += ["**Samples per epoch** (reference settings; epoch = steps × measured step + "
                "measured per-epoch overhead; the measured epoch beside it). Each cached case "
                f"holds {sc.get('cached_mib_per_case', 2):.0f} MiB (CT + mask, float32), so "
                "memory grows by that per training case, not with samples per epoch.", "",
                _table(["samples/epoch", "steps", "epoch (est.)", "per sample", "measured"],
                       [[e["samples_per_epoch"], e["steps"], f"{e['epoch_s_est']:.1f} s",
                         f"{e['s_per_sample']:.2f} s", fmt_s(e["measured_epoch_s"])]
                        for e in sc["cases_per_epoch"]]), ""]
    return out


RATIO_TEXT = {
    "compiled_vs_predict_f32": "compiled call vs `model.predict`, float32",
    "compiled_vs_predict_bf16": "compiled call vs `model.predict`, bfloat16",
    "bf16_vs_f32_inference": "bfloat16 vs float32 inference (compiled, one volume)",
    "bf16_vs_f32_tta8": "bfloat16 vs float32, 8-flip TTA",
    "bf16_vs_f32_training_batch1": "bfloat16 vs float32 training step, batch 1",
    "bf16_vs_f32_training_batch2": "bfloat16 vs float32 training step, batch 2",
    "bf16_vs_f32_training_batch4": "bfloat16 vs float32 training step, batch 4",
    "bf16_dice_change": "test Dice change, bfloat16 minus float32 inference",
    "reread_share_of_epoch": "share of an epoch that re-reading the NIfTI files would add",
    "inter_op_1_vs_default_training_batch2": "one TensorFlow inter-op thread vs the default (one per core): training step, batch 2",
    "inter_op_1_vs_default_inference": "one inter-op thread vs the default: inference (compiled, one volume)",
    "inter_op_1_vs_default_tta8": "one inter-op thread vs the default: 8-flip TTA",
    "cached_vs_reread_data_per_epoch": "cached decoded volumes vs re-reading NIfTI each epoch (data time per epoch)",
    "samples_per_epoch_cost_per_sample": "time per training sample: one pass over the cases vs the reference's samples_per_epoch",
    "quick_vs_original_time_80ep": "time to the original's val Dice: original (80 epochs) / quick profile",
    "quick_vs_original_time_150ep": "time to the original's val Dice: original (150 epochs) / quick profile",
    "quick_vs_original_steps_80ep": "training steps: original (80 epochs) / quick profile to the same val Dice",
    "quick_vs_original_steps_150ep": "training steps: original (150 epochs) / quick profile to the same val Dice",
}


def _ratios_md(r):
    ra = r["ratios"]
    rows = [[RATIO_TEXT.get(k, k), _x(v) if "dice" not in k and "share" not in k else
             (f"{v:+.4f}" if "dice" in k else _pct(v))] for k, v in ra.items()]
    return ["## Speed changes (before / after, from this run)", "",
            "Each ratio is the slow way's time divided by the fast way's (> 1: faster), "
            "both measured in this run.", "", _table(["change", "ratio"], rows), ""]


def _ttd_md(r):
    t = r.get("time_to_dice") or {}
    if not t or "reference_best_val_dice" not in t:
        return ["## Quick profile vs the original", "", t.get("note", "no data"), ""]
    o = t["original"]
    reach = {k: v for k, v in t.items() if k.startswith("reach_")}
    rows = [[k[6:], f"epoch {v['epoch']}, {v['steps']} steps" if v else "not reached"]
            for k, v in reach.items()]
    out = ["## Quick profile vs the original", "",
           f"The reference run's log ({t['reference_epochs']} epochs, "
           f"{t['reference_steps_per_epoch']} steps each, best val Dice "
           f"{t['reference_best_val_dice']:.4f}) against the original project: {o['train_cases']} "
           f"cases at batch 2 = 4 steps an epoch, {o['epochs'][0]}–{o['epochs'][1]} epochs, val "
           f"Dice {o['val_dice']} after 80 epochs (no log of it survives; its splits differ, "
           "so the Dice values are comparable only roughly).", "",
           _table(["val Dice ≥", "first reached"], rows), ""]
    if t.get("speedup"):
        out += [f"Time, from this run's step times + per-epoch overhead: original "
                f"{t['original_s']['80'] / 60:.1f}–{t['original_s']['150'] / 60:.1f} min vs quick "
                f"profile {t['reference_s_to_reach'] / 60:.1f} min to reach {o['val_dice']}: "
                f"{_x(t['speedup']['time_80ep'])}–{_x(t['speedup']['time_150ep'])} faster "
                f"({_x(t['speedup']['steps_80ep'])}–{_x(t['speedup']['steps_150ep'])} fewer "
                "steps)."]
        w = t.get("reference_whole_run")
        if w:
            logged = t.get("reference_s_per_epoch_logged")
            out += ["", f"Whole runs: the quick profile as set trains {w['epochs']} epochs = "
                    f"{w['steps']} steps, about {w['s_est'] / 60:.1f} min by this run's step "
                    f"times" + (f" ({logged * w['epochs'] / 60:.1f} min logged by the reference "
                                f"run itself, {logged:.1f} s an epoch)" if logged else "") +
                    f", against {t['original_s']['80'] / 60:.1f}–{t['original_s']['150'] / 60:.1f} "
                    "min for the original's 80–150 epochs: the quick profile spends its extra "
                    "steps improving past the original's Dice, not reaching it. Stopping it at "
                    "the original's Dice would need an early stop on a Dice target, or about "
                    "a third of the epochs."]
        out.append("")
    return out


def _memory_md(r):
    m = r["memory"]
    return ["## Memory", "",
            "Peak resident memory (`ru_maxrss`) of each measuring process, TensorFlow's own "
            "~0.7 GiB included. Target: under 4 GiB each, so the project runs on an 8 GB laptop.",
            "", _table(["what", "peak", "< 4 GiB"], [
                ["training, quick profile (train.train)", _mib(m["training_quick_profile_mib"]),
                 "yes" if m["training_ok"] else "**no**"],
                ["inference (largest: one volume, TTA, or a native scan)", _mib(m["inference_mib"]),
                 "yes" if m["inference_ok"] else "**no**"],
                ["native scan end to end, no TTA", _mib(m.get("native_end_to_end_no_tta_mib")), ""]]),
            ""]


def _job_md(r):
    job = r.get("job") or {}
    jobs = job.get("jobs") or {}
    if not jobs:
        return ["## The whole job", "",
                "Not recorded yet: the Makefile's notebook loop and test target write "
                "`benchmarks/job_timings.json` through `benchmarks/time_job.py` (see README.md); "
                "run `make all` / `make test`, then `python benchmarks/run.py --readme`.", ""]
    rows = [[k, f"{v['wall_s'] / 60:.1f} min", _mib(v.get("peak_rss_mib")), v.get("profile", ""),
             v.get("rc"), v.get("finished", "")[:16]] for k, v in jobs.items()]
    return ["## The whole job", "",
            "Wall time of each step of the main command and of the test command, as the "
            "Makefile ran them last (`benchmarks/job_timings.json`).", "",
            _table(["step", "wall", "largest process", "profile", "exit", "finished"], rows), ""]


def _gpu_md(r):
    g = r.get("gpu") or {}
    if not g.get("lent"):
        return ["## GPU", "", g.get("note", "No GPU was lent."), ""]
    return ["## GPU", "", f"`benchmarks/gpu.py` on {g.get('device', '?')} "
            f"(KERAS_BACKEND={g.get('backend', 'jax')}): training step "
            f"{fmt_s(g.get('train_step_s'))}, inference {fmt_s(g.get('inference_s'))}.", ""]


# --------------------------------------------------------------------------- plot


def plot_scaling(r: dict, path) -> Path:
    """Three panels: step time vs input size, vs batch, epoch time vs samples per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = r["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    ax = axes[0]
    pts = [e for e in sc["input_size"] if e.get("step_s")]
    if pts:
        vox = [e["size"] ** 3 / 1e6 for e in pts]
        ax.plot(vox, [e["step_s"]["median"] for e in pts], "o-", color="#0072B2")
        for e, v in zip(pts, vox):
            ax.errorbar(v, e["step_s"]["median"], yerr=[[e["step_s"]["median"] - e["step_s"]["min"]],
                        [e["step_s"]["max"] - e["step_s"]["median"]]], color="#0072B2", capsize=3)
            ax.annotate(f"{e['size']}³\n{e['peak_rss_mib'] / 1024:.1f} GiB", (v, e["step_s"]["median"]),
                        textcoords="offset points", xytext=(4, -18), fontsize=7)
    ax.set(xlabel="input voxels (millions)", ylabel="training step (s)",
           title="input size (batch 1, f32)")
    ax = axes[1]
    for prec, colour in (("f32", "#0072B2"), ("bf16", "#D55E00")):
        pts = [e for e in sc["batch"] if e["precision"] == prec]
        if pts:
            ax.plot([e["batch"] for e in pts], [e["step_s"]["median"] for e in pts], "o-",
                    color=colour, label=prec)
            for e in pts:
                ax.annotate(f"{e['peak_rss_mib'] / 1024:.1f} GiB", (e["batch"], e["step_s"]["median"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set(xlabel="batch size", ylabel="training step (s)", title="batch (64³)")
    ax.legend(fontsize=8)
    ax = axes[2]
    pts = sc["cases_per_epoch"]
    if pts:
        ax.plot([e["samples_per_epoch"] for e in pts], [e["epoch_s_est"] for e in pts], "o-",
                color="#009E73", label="steps × step + overhead")
        meas = [e for e in pts if e.get("measured_epoch_s")]
        if meas:
            ax.plot([e["samples_per_epoch"] for e in meas],
                    [e["measured_epoch_s"]["median"] for e in meas], "k^", label="measured")
        ax.legend(fontsize=8)
    ax.set(xlabel="samples per epoch", ylabel="epoch (s)", title="samples per epoch")
    for a in axes:
        a.grid(alpha=0.3)
        a.set_ylim(bottom=0)
        a.set_xlim(left=0)
    fig.suptitle("lungseg training cost on " + (r["machine"].get("model") or "this CPU") +
                 f", {r['machine'].get('logical_cpus')} CPUs" + (" (tiny run)" if r.get("tiny") else ""),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
