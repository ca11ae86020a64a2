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
# # 06 · Test-time augmentation: does averaging over flips help, and what does it cost?
#
# A network trained on flipped volumes should give the same answer for a flipped input, but
# never exactly does. Test-time augmentation (TTA) predicts all 8 flip combinations of the
# three axes, flips each prediction back and averages them. Two things come out: a
# (hopefully) better probability, and the voxel-wise **standard deviation** across the 8,
# an uncertainty map. Whether TTA helps is *measured* here, per case, with a confidence
# interval: not assumed.

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import anatomy, config, experiments, geometry, inference, dataio, metrics
from lungseg_utils import preprocess, synthetic, viewer, viz

viz.apply_style()
run = config.active_run_dir()  # $LUNGSEG_RUN: what notebook 04 trained; else results/reference
GRIDS = experiments.GRIDS  # result-file key -> label: grid64 "64³", native "native"
folders = {"grid64": synthetic.resolve_data_dir(), "native": config.native_data_dir()}
smoke = config.profile_name() == "smoke"
forwards = {}  # each model compiled once

# %% [markdown]
# ## TTA in code
# `inference.flip_tta` flips the input every way, runs the flipped copies through the
# network in batches and flips each prediction back:

# %%
viz.show_code(inference.flip_tta)

# %% [markdown]
# `predict_prob64`, through which the inference command, the evaluation and this notebook
# predict a scan (with `tta=False` its only variant is the unflipped input), averages the
# members of an ensemble (when the forward pass returns them one by one) and then takes the
# mean and the standard deviation over the flips:

# %%
viz.show_code(inference.predict_prob64)

# %% [markdown]
# ## Single pass against TTA, per case
# Which models and cases: every case is predicted by a model of the run that never saw it,
# the cross-validation members when the run has them (all nine cases), else its single
# model on its test split.

# %%
jobs = experiments.out_of_fold_jobs(run, max_cases=2 if smoke else None)
print(f"{len(jobs)} cases:", ", ".join(f"{cid} ({src})" for cid, src, _ in jobs))

# %% [markdown]
# On the 64³ grid and on the native grid (probability carried back, thresholded there), by
# `experiments.tta_rows`.

# %%
rows = experiments.tta_rows(jobs, folders, forwards)
print(dataio.format_table([{**r, "grid": GRIDS[r["grid"]]} for r in rows],
                      {"case_id": "", "grid": "", "dice_single": ".4f", "dice_tta": ".4f",
                       "hd95_single_mm": ".1f", "hd95_tta_mm": ".1f"}))

# %% [markdown]
# The gain as a paired difference (TTA minus single pass, per case) with a 95 % bootstrap
# confidence interval over cases. An interval above zero is a gain, to be weighed by its
# size; one that includes zero means we cannot claim TTA helps, and if it is also narrow
# (both ends close to zero) it is evidence that TTA has no measurable effect.

# %%
for grid, g in experiments.tta_gains(rows).items():
    n = sum(r["grid"] == grid for r in rows)
    print(f"{GRIDS[grid]:>7}: Dice gain {g['mean_diff']:+.4f} "
          f"[{g['lo']:+.4f}, {g['hi']:+.4f}] over {n} cases")

# %% [markdown]
# ## What TTA costs
# Eight forward passes instead of one, in one batch through the compiled network. Times
# are medians of five runs on the model grid, after a warm-up; they depend on the machine
# and on whatever else it is doing.

# %%
x64 = preprocess.window_normalise(dataio.load_case(folders["grid64"] / jobs[0][0]).ct_hu)
timings = experiments.time_inference(forwards[jobs[0][2]], x64)
print(f"single pass {timings['single']:.2f} s, TTA {timings['tta']:.2f} s "
      f"({timings['tta'] / timings['single']:.1f}x)")

# %% [markdown]
# ## The uncertainty map and the errors
# On the native scan of the case where TTA changed the most: the standard deviation across
# the 8 flips (carried back to the native grid) beside the errors of the TTA mask. How well
# the one points at the other is measured below, on this one case only, so it is an
# illustration, not a finding.

# %%
grid = "native" if folders["native"] else "grid64"
focus = max([r for r in rows if r["grid"] == grid],
            key=lambda r: abs(r["dice_tta"] - r["dice_single"]))["case_id"]
model_path = next(p for cid, _, p in jobs if cid == focus)
case = dataio.load_case(folders[grid] / focus)
res = inference.predict_volume(forwards[model_path], case.ct_hu, case.affine, tta=True)
std = geometry.from_model_grid(res["std64"], res["grid"])
wrong = (res["mask"] > 0) != (case.mask > 0)
z = viz.busiest_slice(wrong, case.affine, "axial")  # the axial slice with the most error

# %%
fig, axes = plt.subplots(1, 2, figsize=(viz.COL_IN, 1.95))   # printed one column wide
viz.show_slice(axes[0], case.ct_hu, "axial", z, case.spacing_mm, case.affine, window="lung",
               mask=case.mask, pred=res["mask"], overlay="errors", alpha=0.6)
axes[0].get_legend().set_bbox_to_anchor((1.02, 0.0))   # under both panels
axes[0].set_title("errors of the TTA mask", fontsize=8)
viz.show_slice(axes[1], case.ct_hu, "axial", z, case.spacing_mm, case.affine, window="lung",
               labels=True)
std_slice = viz.display_slice(std, case.affine, "axial", z)
im = axes[1].imshow(np.ma.masked_less(std_slice, 0.02), cmap="YlOrRd", vmin=0, vmax=0.5,
                    aspect=viz.slice_aspect(case.spacing_mm, "axial", case.affine))
cax = axes[1].inset_axes((1.03, 0.1, 0.05, 0.8))     # inside the panel's own box: same size
fig.colorbar(im, cax=cax).set_label("SD over 8 flips", fontsize=7)
axes[1].set_title("TTA uncertainty", fontsize=8)
fig.suptitle(focus, fontsize=8)
fig.subplots_adjust(wspace=0.05)
viz.export_figure(fig, "06_tta_uncertainty")
fig.set_dpi(2 * fig.get_dpi())   # on screen at twice its printed size, to be readable
plt.show()

# %% [markdown]
# How well does the uncertainty point at the errors? The area under the ROC curve of the
# standard deviation as a detector of wrong voxels, within 10 mm of the reference boundary,
# where the errors are (the first line says what share of them).

# %%
band = anatomy.boundary_band(case.mask, case.spacing_mm, 10.0)
auc = metrics.roc_auc(std[band], wrong[band])
print(f"wrong voxels within 10 mm of the boundary: {wrong[band].sum() / max(wrong.sum(), 1):.1%}")
print(f"uncertainty-error AUC near the boundary: {auc:.3f}")

# %%
# NBVAL_IGNORE_OUTPUT
viewer.SliceViewer(case.ct_hu, case.affine, mask=case.mask, pred=res["mask"], uncertainty=std,
                   title=f"{focus} with TTA")

# %% [markdown]
# Results for the report, in the run's `tta.json` (`experiments.tta_result`; a
# temporary folder under the smoke profile).

# %%
tta_result = experiments.tta_result(rows, timings, auc, focus, run_dir=run)
print("wrote", experiments.save_result(tta_result, "tta.json", run).name)

# %% [markdown]
# **What we learned.** What TTA buys and what it costs, from this run's numbers: the time
# ratio above, and on each grid the paired Dice interval with what it means. The
# uncertainty map comes from the same eight passes, so it costs what TTA costs.

# %%
print(f"cost: {timings['tta'] / timings['single']:.1f}x the time of a single pass "
      f"({timings['single']:.2f} s -> {timings['tta']:.2f} s on the model grid)")
for grid, g in experiments.tta_gains(rows).items():
    if g["lo"] > 0:
        meaning = "a gain: the interval lies above zero"
    elif g["hi"] < 0:
        meaning = "a loss: the interval lies below zero"
    else:
        meaning = (f"no measurable effect: the interval includes zero and both its ends lie "
                   f"within {max(-g['lo'], g['hi']):.4f} of it")
    print(f"{GRIDS[grid]:>7}: Dice {g['mean_diff']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}], {meaning}")

# %% [markdown]
# Whether to run TTA by default follows from the native grid's interval (the grid the
# inference command delivers), the same rule the report prints:

# %%
print(experiments.tta_recommendation(tta_result)["text"])
