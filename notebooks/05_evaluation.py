# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
# ---

# %% [markdown]
# # 05 · Evaluation: how good is the model, honestly?
#
# A single mean Dice hides almost everything that matters. This notebook scores the
# reference model (`results/reference/best_model.keras`) on the patients its training never
# saw, with four metrics (Dice, IoU, the 95th-percentile Hausdorff distance and the average
# symmetric surface distance, both in millimetres) plus the lung volume error; it sets the
# network beside a classical, non-learning method and beside the best any 64³ model could do;
# it shows the worst case, not only the mean; and it repeats everything on the scans' native
# grid, where the predictions are carried back from the model grid.

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, evaluate, inference, io, viz

viz.apply_style()
reference = config.REFERENCE_DIR
split = io.load_json(reference / "split.json")
data_dir = config.resolve_data_dir()
native_dir = config.native_data_dir()
forward = inference.compiled_forward(inference.load_model(reference))
METHODS = ["unet", "unet_post", "baseline"]
LABELS = {"unet": "U-Net", "unet_post": "U-Net + post", "baseline": "classical",
          "ceiling": "64³ ceiling", "unet_raw": "U-Net, 5 mm edge"}

# %% [markdown]
# The held-out test patients of the reference split (the network never trained on them and
# no setting was chosen by them):

# %%
# NBVAL_CHECK_OUTPUT
test_ids = split["test"]
print("test:", test_ids, "| validation:", split["val"], "| training:", len(split["train"]), "cases")

# %% [markdown]
# ## On the 64³ course grid
# The classical baseline thresholds air at -400 HU, removes the air outside the body slice
# by slice (closing the body where the field of view cuts it, so that a lung touching the
# border survives), traces and removes the trachea and main bronchi, keeps the lungs'
# components and fills holes. "U-Net + post" keeps the one or two largest components of the
# network's mask and fills enclosed holes.

# %%
rows64, masks64 = [], {}
for cid in test_ids:
    case = io.load_case(data_dir / cid)
    row, masks, _ = evaluate.compare_methods(forward, case)
    rows64.append(row)
    masks64[cid] = (case, masks)
columns = {"case_id": ""}
for m in METHODS:
    columns.update({f"{m}.dice": ".4f", f"{m}.hd95_mm": ".1f"})
flat = [{"case_id": r["case_id"], **{f"{m}.{k}": r[m][k] for m in METHODS for k in ("dice", "hd95_mm")}}
        for r in rows64]
print(io.format_table(flat, columns))

# %% [markdown]
# Summary over the test cases: mean ± SD, median and the worst case for every metric.

# %%
summary64 = evaluate.summarise_methods(rows64, METHODS)
lines = []
for m in METHODS:
    for k, fmt in (("dice", ".4f"), ("iou", ".4f"), ("hd95_mm", ".1f"), ("assd_mm", ".2f"),
                   ("volume_error_pct", "+.1f")):
        s = summary64[m][k]
        lines.append({"method": LABELS[m], "metric": k, "mean": format(s["mean"], fmt),
                      "sd": format(s["sd"], fmt.lstrip("+")), "median": format(s["median"], fmt),
                      "worst": f"{format(s['worst_value'], fmt)} ({s['worst_case_id']})"})
print(io.format_table(lines, {"method": "", "metric": "", "mean": "", "sd": "", "median": "",
                              "worst": ""}))

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
# -200 HU (`inference.refine_boundary`; the threshold was chosen on the reference model's
# training cases). The table shows how much of the gap to the ceiling that closes.

# %%
rows_nat, masks_nat = [], {}
for cid in test_ids if native_dir else []:
    case = io.load_case(native_dir / cid)
    row, masks, _ = evaluate.compare_methods(forward, case, with_ceiling=True)
    rows_nat.append(row)
    masks_nat[cid] = (case, masks)
NATIVE_METHODS = ["unet_raw"] + METHODS + ["ceiling"]
flat = [{"case_id": r["case_id"], **{f"{m}.{k}": r[m][k] for m in NATIVE_METHODS for k in ("dice", "hd95_mm")}}
        for r in rows_nat]
columns = {"case_id": ""}
for m in NATIVE_METHODS:
    columns.update({f"{m}.dice": ".4f", f"{m}.hd95_mm": ".1f"})
print(io.format_table(flat, columns) if flat else "no native scans found")
summary_nat = evaluate.summarise_methods(rows_nat, NATIVE_METHODS) if rows_nat else {}

# %% [markdown]
# ## Cross-validation: every case, once unseen
# Two test cases are too few to trust. The quick configuration was therefore also trained
# three times (3-fold cross-validation, `train.cross_validate`; the fold models are in
# `results/reference/cv/`), and each of the nine cases is scored here by the one model that
# never saw it, on both grids: the broadest honest estimate nine cases allow.

# %%
jobs = evaluate.out_of_fold_jobs(reference, max_cases=2 if config.profile_name() == "smoke" else None)
cv_rows, cv_rows_nat, forwards = [], [], {}
for cid, source, model_path in jobs if "CV" in jobs[0][1] else []:
    fwd = forwards.setdefault(model_path, inference.compiled_forward(inference.load_model(model_path)))
    cv_rows.append({**evaluate.compare_methods(fwd, io.load_case(data_dir / cid))[0], "fold": source})
    if native_dir:
        row, _, _ = evaluate.compare_methods(fwd, io.load_case(native_dir / cid), with_ceiling=True)
        cv_rows_nat.append({**row, "fold": source})
cv = None
if cv_rows:
    flat = [{"case_id": r["case_id"], "fold": r["fold"], "unet64": r["unet"]["dice"],
             "baseline64": r["baseline"]["dice"],
             **({"unet_native": n["unet"]["dice"], "baseline_native": n["baseline"]["dice"],
                 "ceiling_native": n["ceiling"]["dice"]} if cv_rows_nat else {})}
            for r, n in zip(cv_rows, cv_rows_nat or cv_rows)]
    print(io.format_table(flat, {k: ("" if k in ("case_id", "fold") else ".4f") for k in flat[0]}))
    cv = {"folds": len({r["fold"] for r in cv_rows}),
          "grid64": {"methods": METHODS, "cases": cv_rows,
                     "summary": evaluate.summarise_methods(cv_rows, METHODS)},
          "native": {"methods": NATIVE_METHODS, "cases": cv_rows_nat,
                     "summary": evaluate.summarise_methods(cv_rows_nat, NATIVE_METHODS) if cv_rows_nat else {}}}
    for grid_name in ("grid64", "native"):
        for m in cv[grid_name]["summary"]:
            s = cv[grid_name]["summary"][m]["dice"]
            print(f"{grid_name:>7} {LABELS[m]:>13}: Dice {s['mean']:.4f} ± {s['sd']:.4f}, "
                  f"median {s['median']:.4f}, worst {s['worst_value']:.4f} ({s['worst_case_id']})")
else:
    print("no cross-validation models in results/reference/cv/")

# %% [markdown]
# ## Box plots
# Dice and HD95 per method on the reference split's test cases; each dot is one case (grey:
# the cross-validation's out-of-fold U-Net on all nine cases, when present).

# %%
fig, axes = plt.subplots(1, 2, figsize=(viz.PAGE_IN, 2.9))
groups = [("64³", rows64, METHODS), ("native", rows_nat, NATIVE_METHODS)]
for ax, key, title in ((axes[0], "dice", "Dice"), (axes[1], "hd95_mm", "HD95 (mm)")):
    data, names, pos = [], [], []
    x = 0
    for grid_name, rows, methods in groups:
        for m in methods:
            if not rows:
                continue
            data.append([r[m][key] for r in rows])
            names.append(f"{LABELS[m]} ({grid_name})")
            pos.append(x)
            x += 1
        x += 0.5
    if cv:
        data.append([r["unet"][key] for r in cv["native"]["cases"] or cv["grid64"]["cases"]])
        names.append("U-Net, CV (" + ("native" if cv["native"]["cases"] else "64³") + ")")
        pos.append(x)
    ax.boxplot(data, positions=pos, widths=0.6, showfliers=False)
    for p, d in zip(pos, data):
        ax.scatter(np.full(len(d), p) + np.linspace(-0.12, 0.12, len(d)), d, s=8, zorder=3,
                   color="0.5" if "CV" in names[pos.index(p)] else "#0072B2")
    ax.set_xticks(pos, names, fontsize=6, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_title(title)
viz.export_figure(fig, "05_dice_boxplot")
plt.show()

# %% [markdown]
# ## Where the errors are: the worst case
# The test case with the lowest U-Net Dice on the native grid, on the slices with the most
# error: true positives green, false positives (predicted lung that is not) orange, false
# negatives (missed lung) blue; U-Net on the left, classical baseline on the right.

# %%
rows_for_worst = rows_nat or rows64
chosen = masks_nat or masks64
worst_id = min(rows_for_worst, key=lambda r: r["unet"]["dice"])["case_id"]
case, masks = chosen[worst_id]
fig, axes = plt.subplots(2, 3, figsize=(viz.PAGE_IN, 4.6))
for i, method in enumerate(("unet", "baseline")):
    wrong = (masks[method] > 0) != (case.mask > 0)
    for j, axis in enumerate(("axial", "coronal", "sagittal")):
        k = viz.slicing_axis(case.affine, axis)
        other = tuple(a for a in range(3) if a != k)
        index = int(np.argmax(wrong.sum(axis=other)))
        viz.show_slice(axes[i, j], case.ct_hu, axis, index, case.spacing_mm, case.affine,
                       window="lung", mask=case.mask, pred=masks[method], overlay="errors",
                       alpha=0.55)
        axes[i, j].set_title(f"{LABELS[method]}, {axis}", fontsize=7)
        if axes[i, j].get_legend() and not (i == 1 and j == 1):
            axes[i, j].get_legend().remove()
fig.suptitle(f"{worst_id}: Dice {min(r['unet']['dice'] for r in rows_for_worst):.4f} (U-Net)")
viz.export_figure(fig, "05_worst_cases")
plt.show()

# %% [markdown]
# Explore the worst case yourself: the viewer's "errors" overlay is the picture above, on any
# slice.

# %%
# NBVAL_IGNORE_OUTPUT
viz.SliceViewer(case.ct_hu, case.affine, mask=case.mask, pred=masks["unet"], title=worst_id)

# %% [markdown]
# ## Results file for the report
# Everything above goes to `results/reference/evaluation.json`, which the report and the
# README read (no number in them is typed by hand). The smoke profile of the test suite
# writes to a temporary folder instead, so tests never change the committed results.

# %%
evaluation = {
    "model": str((reference / "best_model.keras").relative_to(config.REPO_ROOT)),
    "test_cases": test_ids,
    "grid64": {"methods": METHODS, "cases": rows64, "summary": summary64},
    "native": {"methods": NATIVE_METHODS, "cases": rows_nat, "summary": summary_nat},
}
if cv:
    evaluation["cross_validation"] = cv
out_dir = reference if config.profile_name() != "smoke" else config.FIGURES_DIR
path = io.save_json(evaluation, out_dir / "evaluation.json", overwrite=True)
print("wrote", path.name)

# %% [markdown]
# **Reading the numbers.** Dice rewards the bulk of a large organ and barely notices a
# missed lobe tip; HD95 and ASSD, in millimetres, show the boundary. At 5 mm voxels an HD95
# of one voxel is the floor, which is why the native-grid ceiling matters: the gap between
# the U-Net and the ceiling is what a better network could still win on this grid, the gap
# between the ceiling and a perfect 1.0 is what only a finer grid could.
