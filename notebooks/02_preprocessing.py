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
# # 02 · Preprocessing: from Hounsfield units to network tensors, and back to the scan
#
# The network wants a fixed-size cube of numbers in [0, 1]; a clinic stores scans of any size,
# voxel spacing and orientation. This notebook shows the two steps in between and checks
# that they lose nothing that matters: the **HU window and normalisation**, and the **model
# grid**: 64³ voxels of 5 mm, reached from any scan and left again onto the scan's own grid,
# so that every mask we write has the input's shape and affine.

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, geometry, dataio, metrics, preprocess, synthetic, viz

viz.apply_style()
cases = dataio.load_cases(synthetic.resolve_data_dir())
case = cases[0]

# %% [markdown]
# ## The HU window and min-max normalisation
# As in the original project: clip to [-1000, 300] HU, then scale linearly over the
# *window's* bounds (not the volume's own minimum and maximum), so that the same tissue
# always gets the same value in every scan. Air becomes 0, soft tissue about 0.78, and
# bone and metal saturate at 1. In code it is one line, the last of the module's function:

# %%
viz.show_code(preprocess.window_normalise)

# %% [markdown]
# The network takes a channel axis as well (`to_tensor`), and the mask as {0, 1}
# (`binarise_mask`). On the first case:

# %%
# NBVAL_CHECK_OUTPUT
x = preprocess.to_tensor(preprocess.window_normalise(case.ct_hu, config.HU_WINDOW))
y = preprocess.to_tensor(preprocess.binarise_mask(case.mask))
print("input ", case.ct_hu.shape, case.ct_hu.dtype, f"[{case.ct_hu.min():.0f}, {case.ct_hu.max():.0f}] HU")
print("tensor", x.shape, x.dtype, f"[{x.min():.2f}, {x.max():.2f}]")
print("label ", y.shape, y.dtype, "values", np.unique(y))

# %% [markdown]
# Before and after, on the axial slice with the most lung, with their histograms.

# %%
z = viz.busiest_slice(case.mask, case.affine, "axial")
fig, axes = plt.subplots(1, 4, figsize=(viz.PAGE_IN, 1.9), layout="constrained",
                         gridspec_kw=dict(width_ratios=[1, 1.25, 1, 1.25]))  # no overlaps
viz.show_slice(axes[0], case.ct_hu, "axial", z, case.spacing_mm, case.affine,
               window=(-1024, 1500), labels=False)
axes[0].set_title("raw HU")
axes[1].hist(case.ct_hu.ravel(), bins=120, color="0.4")
axes[1].set(xlabel="HU", yscale="log", title="raw histogram")
viz.show_slice(axes[2], x[..., 0], "axial", z, case.spacing_mm, case.affine, window=(0, 1),
               labels=False)
axes[2].set_title("window + min-max")
axes[3].hist(x.ravel(), bins=120, color="#0072B2")
axes[3].set(xlabel="normalised value", yscale="log", title="after")
viz.export_figure(fig, "02_window_normalisation")
plt.show()

# %% [markdown]
# ## The model grid, from the scan's own grid and back
# A native scan is 256 × 256 × N voxels of 1.95 × 1.95 × 3 mm with the whole 500 mm field of
# view. To reach the model grid, the CT is smoothed (anti-aliasing) and sampled on a 320 mm
# cube of 5 mm voxels, **centred on the lungs as seen in the image** (the low-HU region inside
# the body, trachea trimmed); the label is never used for that. Predictions come back the
# other way: the 64³ *probability* is interpolated onto the scan's grid and thresholded there.
#
# The test: take the expert mask itself to 64³ (as a fraction of lung per voxel) and back.
# Whatever is lost here is lost for any 64³ model: it is the **resolution ceiling**. We also
# show what happens if the 64³ mask is binarised before going back.

# %%
native_dir = config.native_data_dir()
rows = []
for folder in dataio.discover_cases(native_dir) if native_dir else []:
    nat = dataio.load_case(folder)
    ct64, grid = geometry.to_model_grid(nat.ct_hu, nat.affine)
    prob64 = geometry.mask_to_model_grid(nat.mask, grid)
    back = geometry.from_model_grid(prob64, grid) >= 0.5
    back_binary = geometry.from_model_grid((prob64 >= 0.5).astype(np.float32), grid) >= 0.5
    label_centre = geometry.bbox_centre_mm(nat.mask, nat.affine)
    rows.append({"case_id": nat.case_id, "shape": nat.shape,
                 "dice": metrics.dice(back, nat.mask),
                 "volume_error_pct": 100 * (back.sum() / nat.mask.sum() - 1),
                 "dice_binarised_first": metrics.dice(back_binary, nat.mask),
                 "centre_offset_mm": float(np.linalg.norm(grid.centre_mm - label_centre))})
if not rows:
    print("lctsc_native not found: set LUNGSEG_NATIVE_DATA to run the round trip.")

# %%
# NBVAL_CHECK_OUTPUT
print(dataio.format_table(rows, {"case_id": "", "shape": "", "dice": ".4f", "volume_error_pct": "+.2f",
                             "dice_binarised_first": ".4f", "centre_offset_mm": ".1f"}))
dice_rt = np.array([r["dice"] for r in rows])
print(f"\nround trip Dice {dice_rt.min():.4f} to {dice_rt.max():.4f}; binarising first: "
      f"{min(r['dice_binarised_first'] for r in rows):.4f} to "
      f"{max(r['dice_binarised_first'] for r in rows):.4f}")

# %% [markdown]
# Carrying probabilities back keeps Dice high and the volume error small on every scan (the
# table); binarising at 64³ first costs more Dice than that (the last line: compare the two
# ranges), as much as separates good from excellent methods in the LCTSC challenge. The
# image-based centre lands close to the label's centre (the last column, in mm; one model
# voxel is 5 mm).
#
# One scan, three views: the native slice, the same anatomy on the model grid, and the mask
# after the round trip (its outline over the native slice).

# %%
nat = dataio.load_case(dataio.discover_cases(native_dir)[0]) if native_dir else case
ct64, grid = geometry.to_model_grid(nat.ct_hu, nat.affine)
back = geometry.round_trip_mask(nat.mask, nat.affine, ct_hu=nat.ct_hu)
k_nat = viz.busiest_slice(nat.mask, nat.affine, "axial")
k_64 = int(np.round(np.linalg.solve(grid.affine, nat.affine @ [0, 0, k_nat, 1])[2]))
fig, axes = plt.subplots(1, 3, figsize=(viz.COL_IN, 1.75))   # printed one column wide
viz.show_slice(axes[0], nat.ct_hu, "axial", k_nat, nat.spacing_mm, nat.affine, window="lung",
               mask=nat.mask)
axes[0].set_title(f"native {nat.spacing_mm[0]:.2f} mm", fontsize=7)
viz.show_slice(axes[1], ct64, "axial", k_64, (5, 5, 5), grid.affine, window="lung",
               mask=geometry.mask_to_model_grid(nat.mask, grid) >= 0.5)
axes[1].set_title("64³ grid, 5 mm", fontsize=7)
viz.show_slice(axes[2], nat.ct_hu, "axial", k_nat, nat.spacing_mm, nat.affine, window="lung",
               mask=nat.mask, pred=back, pred_name="round trip")
axes[2].set_title("round trip", fontsize=7)
axes[2].get_legend().set_bbox_to_anchor((-0.6, 0.0))    # under the middle of the figure
fig.subplots_adjust(wspace=0.05)
viz.export_figure(fig, "02_model_grid_round_trip")
plt.show()

# %% [markdown]
# The trip is carried by two affines, each a 4 × 4 matrix that takes a voxel index
# (i, j, k, 1) to world millimetres (nibabel's RAS+: x toward the patient's right, y
# anterior, z superior): the scan's, read from its header, and the model grid's, which
# `to_model_grid` built (`grid.affine`).

# %%
np.set_printoptions(precision=2, suppress=True)
print(f"{nat.case_id}, its own grid:\n{nat.affine}\nthe model grid:\n{grid.affine}")
print(f"model voxel -> scan voxel:\n{np.round(np.linalg.solve(nat.affine, grid.affine), 2) + 0.0}")

# %% [markdown]
# In the model grid's affine, column *n* of the first three is one step along array axis *n*
# in world mm: 5 mm each, the sign giving the direction (−x: toward the patient's left, −y:
# posterior, +z: superior, the L, P, S order of the course data); the last column is the
# world position, in mm, of voxel (0, 0, 0). Combined with the scan's (last matrix), the
# diagonal says how many scan voxels one model voxel spans and the last column where model
# voxel (0, 0, 0) lies among the scan's voxels. `to_model_grid` samples the scan through
# this map; `from_model_grid` comes back through its inverse.

# %% [markdown]
# ## What "label-centred" means for the course data
# The course cubes were cut around the centre of each **mask's** bounding box: the label
# decided what the network sees. For a new scan no label exists, which is why the model grid
# above is centred from the image. A course cube, being 64³ at 5 mm already, passes through
# the model grid unchanged:

# %%
# NBVAL_CHECK_OUTPUT
ct64, grid = geometry.to_model_grid(case.ct_hu, case.affine)
print("course cube passes through unchanged:", grid.passthrough and np.array_equal(ct64, case.ct_hu))
print("model grid orientation:", "".join(geometry.MODEL_AXCODES))

# %% [markdown]
# **What we learned.** The network sees a fixed 64³ grid, but every answer is given on the
# scan's own grid, by carrying probabilities (not masks) back. And two consequences of how
# the course data were cut. The training cubes always have the lungs in the middle, so the network
# never learns what to do with lungs off-centre; the augmentation in notebook 03 adds small
# shifts for that reason. And a model evaluated on label-centred cubes is evaluated on a
# slightly easier problem than a clinic's: notebook 05 also evaluates on the native scans,
# centred from the image, to measure the difference.
