# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Evaluation: how good is the model, honestly?
#
# A single mean Dice hides almost everything that matters. This notebook scores the run
# that notebook 04 trained (or, with `make all RUN=results/reference`, the committed
# reference), an ensemble of cross-validation members, on **every case, each segmented by
# the member that never saw it** (out of fold). It uses four metrics (Dice, IoU, the
# 95th-percentile Hausdorff distance and the average symmetric surface distance, both in
# millimetres) plus the lung volume error; it sets the network beside a classical,
# non-learning method and beside the best any 64³ model could do; it names the worst case,
# not only the mean; it repeats everything on the scans' native grid, where the predictions
# are carried back from the model grid; and it shows how the models hold up when the scans
# are shifted in controlled ways (the robustness suite) and how far one training run can be
# trusted (the same member trained with other seeds).

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import (anatomy, config, dataio, experiments, inference, metrics, synthetic,
                           viewer, viz)

viz.apply_style()
run = config.active_run_dir()  # $LUNGSEG_RUN: what notebook 04 trained; else results/reference
GRIDS = experiments.GRIDS  # result-file key -> label: grid64 "64³", native "native"
folders = {"grid64": synthetic.resolve_data_dir(), "native": config.native_data_dir()}
forwards = {}  # each model compiled once, by path
LABELS = experiments.METHOD_LABELS  # method key -> its name in tables and figures

# %% [markdown]
# The run evaluated here:

# %%
# NBVAL_IGNORE_OUTPUT
print("run:", experiments.run_identity(run)["run"])

# %% [markdown]
# ## Which model scores which case
# The run's `manifest.json` lists its members; member *i* trained on every fold but fold
# *i*, whose cases it now scores. (A run without a manifest, a single model, is scored on its
# split's test cases instead.)

# %%
# NBVAL_IGNORE_OUTPUT
jobs = experiments.out_of_fold_jobs(run, max_cases=2 if config.profile_name() == "smoke" else None)
scoring = "split" if jobs[0][1] == "reference" else "out_of_fold"
for cid, source, path in jobs:
    print(f"{cid}: {source} ({dataio.portable_path(path)})")

# %%
# NBVAL_CHECK_OUTPUT
print("no case is scored by a model that trained on it:",
      experiments.jobs_are_out_of_fold(run, jobs))

# %% [markdown]
# Every method is scored on every case, on both grids, by `experiments.evaluate_jobs`;
# this table shows the Dice and HD95 of each (one row per case):

# %%
def case_table(block, keys=("dice", "hd95_mm")):
    """One row per case of a grid's block: the metrics ``keys`` of every method."""
    cols = {"case_id": "", "model": ""} | {f"{m}.{k}": ".4f" if k == "dice" else ".1f"
                                           for m in block["methods"] for k in keys}
    flat = [{"case_id": r["case_id"], "model": r["model"],
             **{f"{m}.{k}": r[m][k] for m in block["methods"] for k in keys}}
            for r in block["cases"]]
    return dataio.format_table(flat, cols) if flat else "no cases on this grid"


# %% [markdown]
# ## On the 64³ course grid
# The classical baseline thresholds air at -400 HU, removes the air outside the body slice
# by slice (closing the body where the field of view cuts it, so that a lung touching the
# border survives), traces and removes the trachea and main bronchi, keeps the lungs'
# components, adds their partial-volume rim (voxels touching the lungs and darker than
# -300 HU, looked for only in the lungs' box, as a one-voxel rim cannot reach further) and
# fills holes — the few lines below, each step one function of `lungseg_utils.anatomy`.
# "U-Net + post-processing" keeps the one or two largest components of the network's mask
# and fills enclosed holes.
#
# The experts' 64³ masks call a 5 mm voxel lung when more than half of it is lung, and the
# network draws its boundary a little inside that. So the pipeline looks at the voxels just
# outside the network's boundary and adds those darker than a threshold
# (`inference.REFINE_HU_MODEL_GRID`): mostly air, so mostly lung. "U-Net, 5 mm edge" is the
# network's mask before that step, "U-Net" after it.

# %%
viz.show_code(anatomy.classical_lung_mask)

# %% [markdown]
# Every method scored on every case of the 64³ grid, one row per case:

# %%
test = experiments.evaluate_jobs(jobs, folders, forwards)
print(case_table(test["grid64"]))

# %% [markdown]
# Summary over the cases, one metric at a time (the registry `metrics.METRICS` names each
# metric, its unit and which of its values is worse): mean ± SD, median and the worst case.
# (Distances are left for the native grid: on 5 mm voxels an HD95 of one voxel, 5 mm, is the
# smallest it can be above zero, so the per-case table above shows mostly that.)

# %%
def summary_table(block, key):
    m_info, rows = metrics.METRICS[key], []
    for m, summary in block["summary"].items():
        s, d = summary[key], m_info.decimals + 1
        rows.append({"method": LABELS[m], "mean": f"{s['mean']:.{d}f}",
                     "sd": f"{s['sd']:.{d}f}", "median": f"{s['median']:.{d}f}",
                     "worst": f"{s['worst_value']:.{d}f} ({s['worst_case_id']})"})
    title = f"{m_info.label}" + (f" ({m_info.unit})" if m_info.unit else "")
    return title + "\n" + (dataio.format_table(rows, dict.fromkeys(rows[0], ""))
                           if rows else "no cases")


for key in ("dice", "volume_error_pct"):
    print(summary_table(test["grid64"], key), end="\n\n")

# %% [markdown]
# ## On the native grid
# The same patients as the clinic stored them (256 × 256 × N voxels of 1.95 × 1.95 × 3 mm).
# Here the network's input is cut from the scan by the model grid *centred from the image*,
# and its probability is carried back to the native grid and thresholded there, exactly as
# the inference command does. The **ceiling** is the expert mask itself taken to 64³ and
# back: no model that only *draws* on a 5 mm grid can beat it.
#
# The network's probability is nearly binary, so carried back it draws a 5 mm staircase
# ("U-Net, 5 mm edge" below). The inference pipeline therefore redraws the boundary at the
# scan's own resolution: within one model voxel of it, a voxel is lung if it is darker than
# a threshold (`inference.refine_boundary`, `inference.REFINE_HU`). The tables show how much
# of the gap to the ceiling that closes.
#
# Both thresholds were chosen among a few candidates by the Dice of the members that never
# saw a case (`lungseg refine-hu`, which writes `refine.json`). "Nested" is the honest
# estimate: each fold's threshold chosen on the other folds' cases only.

# %%
refined = experiments.optional_result(run, "refine.json", "05 (lungseg refine-hu)")
for g, constant in (("grid64", inference.REFINE_HU_MODEL_GRID), ("native", inference.REFINE_HU)):
    r = (refined or {}).get(g)
    print(f"{GRIDS[g]}: the pipeline uses {constant:g} HU; " + (
        f"chosen out of fold: {r['choice']} HU, mean Dice {r['mean'][r['choice']]:.4f} "
        f"(nested {r['nested_mean_dice']:.4f}) against {r['none_mean_dice']:.4f} unrefined"
        if r else "no refine.json for this run (lungseg refine-hu RUN writes it)"))

# %%
print(case_table(test["native"]) if folders["native"] else "no native scans found")

# %%
for key in ("dice", "hd95_mm", "volume_error_pct") if folders["native"] else ():
    print(summary_table(test["native"], key), end="\n\n")

# %% [markdown]
# ## Case by case
# With nine cases a box plot hides more than it shows. Here every case is a line across the
# methods (its Dice under each), so a method that wins on most cases but loses badly on one
# shows it; the worst case of the U-Net on the native grid is drawn in colour.

# %%
grid = "native" if test["native"]["cases"] else "grid64"
worst = min(test[grid]["cases"], key=lambda r: r["unet"]["dice"])
order = ("baseline", "unet_raw", "unet", "unet_post")
fig, axes = plt.subplots(1, 2, figsize=(viz.COL_IN, 2.2), sharey=True)  # one column wide
for ax, (g, label) in zip(axes, GRIDS.items()):
    methods = [m for m in order if m in test[g]["methods"]] if test[g]["cases"] else []
    if methods:
        viz.paired_plot(ax, {LABELS[m]: {r["case_id"]: r[m]["dice"] for r in test[g]["cases"]}
                             for m in methods}, highlight=worst["case_id"])
    ax.set_title(f"{label} grid", fontsize=8)
axes[1].set_ylabel("")
fig.tight_layout(w_pad=0.5)
viz.export_figure(fig, "05_dice_paired")
plt.show()

# %% [markdown]
# ## Where the errors are: the worst case
# The case with the lowest U-Net Dice on the native grid, on the slices where the two
# methods together err most (the same slices for both): true positives green, false
# positives (predicted lung that is not) orange, false negatives (missed lung) blue; U-Net
# above, classical baseline below. Its masks are made again here (the evaluation above
# keeps only the numbers).

# %%
case = dataio.load_case(folders[grid] / worst["case_id"])
worst_model = next(path for cid, _, path in jobs if cid == worst["case_id"])
masks = experiments.compare_methods(forwards[worst_model], case)[1]

# %%
wrong = {m: (masks[m] > 0) != (case.mask > 0) for m in ("unet", "baseline")}
both = wrong["unet"].astype(int) + wrong["baseline"]     # the same slices for both methods
index = {axis: viz.busiest_slice(both, case.affine, axis)
         for axis in ("axial", "coronal", "sagittal")}
fig, axes = plt.subplots(2, 3, figsize=(viz.COL_IN, 2.75))   # printed one column wide
for i, method in enumerate(("unet", "baseline")):
    for j, (axis, k) in enumerate(index.items()):
        viz.show_slice(axes[i, j], case.ct_hu, axis, k, case.spacing_mm, case.affine,
                       window="lung", mask=case.mask, pred=masks[method], overlay="errors",
                       alpha=0.55)
        axes[i, j].set_title(axis if i == 0 else "", fontsize=7)   # planes on top, methods left
        axes[i, 0].text(-0.12, 0.5, LABELS[method], rotation=90, fontsize=7, va="center",
                        ha="right", transform=axes[i, 0].transAxes)
        if axes[i, j].get_legend() and not (i == 1 and j == 1):
            axes[i, j].get_legend().remove()
fig.suptitle(f"{worst['case_id']}, Dice {worst['unet']['dice']:.3f} (U-Net)", fontsize=8)
fig.subplots_adjust(wspace=0.04, hspace=0.18)
viz.export_figure(fig, "05_worst_cases")
plt.show()

# %% [markdown]
# Explore the worst case yourself: the viewer's "errors" overlay is the picture above, on any
# slice.

# %%
# NBVAL_IGNORE_OUTPUT
viewer.SliceViewer(case.ct_hu, case.affine, mask=case.mask, pred=masks["unet"],
                   title=worst["case_id"])

# %% [markdown]
# ## Robustness: the same scans, shifted
# An independent test set once showed that a model can score well here and still fail on
# scans framed, calibrated or stored differently. The robustness suite (`make robustness`,
# `lungseg_utils.study.robustness`) changes each native scan in one controlled way (the framing
# moved 2 cm, HU offset and scaled, noise, blur, other axis orders, thicker slices ...) and
# scores, on the changed scan's own grid, the member that never saw the case, the whole
# ensemble (most of whose members did see it: optimistic) and the classical method. Dots:
# the mean over the cases; crosses: the worst case.

# %%
robust = experiments.optional_result(run, "robustness.json", "05 (make robustness)")
if robust:
    shifts = list(robust["summary"])
    shown = [m for m in robust["methods"] if m in LABELS]
    fig, ax = plt.subplots(figsize=(viz.PAGE_IN, 3.4))
    for i, m in enumerate(shown):
        y = np.arange(len(shifts)) + 0.18 * (i - (len(shown) - 1) / 2)
        s = [robust["summary"][k][m] for k in shifts]
        ax.scatter([v["mean"] for v in s], y, s=14, label=LABELS[m], color=f"C{i}")
        ax.scatter([v["worst_value"] for v in s], y, s=14, marker="x", color=f"C{i}")
    ax.set_yticks(np.arange(len(shifts)), shifts, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("Dice (native grid): mean (dot) and worst case (cross)")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    viz.export_figure(fig, "05_robustness")
    plt.show()
else:
    print(f"no robustness.json in {dataio.portable_path(run)}: run make robustness RUN=...")

# %% [markdown]
# The same as numbers, one small table a method (the mean Dice over the cases, and the worst
# case), for the member that never saw the case and for the classical method:

# %%
# NBVAL_IGNORE_OUTPUT
for m in ("member", "baseline") if robust else ():
    rows = [{"shift": shift, "mean": f"{v[m]['mean']:.3f}",
             "worst": f"{v[m]['worst_value']:.3f} ({v[m]['worst_case_id']})"}
            for shift, v in robust["summary"].items()]
    print(LABELS[m] + "\n" + dataio.format_table(rows, dict.fromkeys(rows[0], "")), end="\n\n")

# %% [markdown]
# ## How many members?
# More folds give each member more cases to learn from and the ensemble more members to
# average, but cost bytes and time per scan. The reference's K was chosen by measurement
# (`lungseg_utils.study.ensemble_size`): candidate ensembles of the same recipe with different K,
# each member scored out of fold on both grids and under the robustness suite, and a rule
# fixed before the results came in (the larger K only if it is better out of fold *and* no
# less sturdy under the shifts):

# %%
# NBVAL_IGNORE_OUTPUT
sizes = experiments.optional_result(run, "ensemble_size.json", "05 (ensemble_size)")
for c in sorted(sizes["candidates"], key=lambda c: c["k"]) if sizes else []:
    d = c["dice"]
    print(f"K={c['k']}: members trained on {min(c['train_cases'])}-{max(c['train_cases'])} "
          f"cases, {c['bytes'] / 1e6:.0f} MB; out of fold Dice 64³ {d['grid64']['mean']:.3f} "
          f"(worst {d['grid64']['worst_value']:.3f}), native {d['native']['mean']:.3f} (worst "
          f"{d['native']['worst_value']:.3f}); robustness worst case, mean over shifts "
          f"{c['robustness']['mean_of_worst']:.3f}")
print(f"chosen: K={sizes['chosen']['k']}" if sizes else f"no ensemble_size.json in "
      f"{dataio.portable_path(run)}: K was not measured for this run")

# %% [markdown]
# ## How far can one training run be trusted?
# One member trained again with other seeds (same cases, same settings: only the random
# initialisation, augmentation and sample order differ), each scored on its unseen cases
# (`lungseg seeds --seeds 42 43 44 --from RUN`):

# %%
# NBVAL_IGNORE_OUTPUT
seeds = experiments.optional_result(run, "seed_spread.json", "05 (lungseg seeds)")
for r in seeds["summary"] if seeds else []:
    print(f"member {seeds['fold']}, {r['case_id']} ({GRIDS[r['grid']]}): Dice {r['min']:.4f} "
          f"to {r['max']:.4f} over seeds {seeds['seeds']}, range {r['range']:.4f}")
if not seeds:
    print(f"no seed_spread.json in {dataio.portable_path(run)}")

# %% [markdown]
# ## Results file for the report
# Everything above goes to the run's `evaluation.json` (`experiments.evaluation_result`
# builds it, with the run's identity and how the cases were scored; `report.schema.check_evaluation`
# is the schema the report checks it against), which the report and the README read: no
# number in them is typed by hand. The test suite trains and evaluates a smoke run of its
# own in a temporary folder, so tests never change the committed results.

# %%
evaluation = experiments.evaluation_result(run / inference.MANIFEST if scoring == "out_of_fold"
                                           else run / inference.MODEL_FILE, test, None,
                                           run_dir=run, scoring=scoring)
print("wrote", experiments.save_result(evaluation, "evaluation.json", run).name)

# %% [markdown]
# ## The U-Net against the classical pipeline, paired by case
# The mean difference of Dice (U-Net minus classical) with a paired bootstrap interval over
# the cases, and on how many cases the U-Net is ahead; the same numbers the report prints.

# %%
for grid_key, method in (("grid64", "unet"), ("native", "unet"), ("native", "unet_raw")):
    if test[grid_key]["cases"]:
        d = experiments.method_difference(evaluation, grid_key, b=method)
        print(f"{LABELS[method]} − classical ({GRIDS[grid_key]}): {d['mean_diff']:+.4f} "
              f"[{d['lo']:+.4f}, {d['hi']:+.4f}], ahead on {d['n_better']} of {d['n']} cases")

# %% [markdown]
# **What we learned.** Every case was scored by a model that never saw it; the paired
# intervals above, not the means, say whether the U-Net beats a threshold pipeline on these
# scans, and the robustness suite whether that holds when the scans change. Dice rewards the bulk of a large organ and barely notices a
# missed lobe tip; HD95 and ASSD, in millimetres, show the boundary. At 5 mm voxels an HD95
# of one voxel is the floor, which is why the native-grid ceiling matters: the gap between
# the U-Net and the ceiling is what a better network could still win on this grid, the gap
# between the ceiling and a perfect 1.0 is what only a finer grid could.
