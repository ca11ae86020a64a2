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
# # 01 · Data exploration: nine real chest CTs with expert lung masks
#
# Before a network sees a single voxel we look at what we have: how many scans, on what
# grid, in which orientation, with what intensities, and how large the lungs are. Every
# later choice (the HU window, the 64³ grid, the augmentations, the metrics in millimetres)
# rests on what this notebook shows.
#
# The scans come from the **Lung CT Segmentation Challenge 2017 (LCTSC)** published by The
# Cancer Imaging Archive under CC BY 3.0 (Yang et al., 2017, DOI 10.7937/K9/TCIA.2017.3R3FVZ08;
# Yang et al., *Med Phys* 2018; Clark et al., *J Digit Imaging* 2013). Here they are in the
# course format: 64 × 64 × 64 voxels of 5 mm, CT in Hounsfield units (HU), lung mask in {0, 1}.

# %% [markdown]
# Setup: the shared module does all the work; the notebook only calls and shows.

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, dataio, synthetic, viewer, viz

viz.apply_style()
data_dir = synthetic.resolve_data_dir()
cases = dataio.load_cases(data_dir)

# %% [markdown]
# Where the data came from and how many cases there are (the resolver tries
# `$LUNGSEG_DATA`, then `data/`, then `../shared/data/lctsc64`, then a synthetic demo set).

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(cases)} cases from {data_dir.parent.name}/{data_dir.name}")

# %% [markdown]
# ## One row per case
# Shape, voxel size and orientation are read from each file's header (never assumed);
# orientation is given as nibabel axis codes: the patient direction toward which each array
# axis runs. Lung volume is the voxel count times the voxel volume.

# %%
# NBVAL_CHECK_OUTPUT
rows = [dataio.describe_case(c) for c in cases]
print(dataio.format_table(rows, {"case_id": "", "shape": "", "spacing_mm": "", "axcodes": "",
                             "hu_min": ".0f", "hu_max": ".0f", "lung_volume_ml": ".0f",
                             "lung_fraction": ".3f", "lung_mean_hu": ".0f",
                             "touches_border": ""}))

# %% [markdown]
# How large the lungs are, and how many masks reach a face of the 320 mm cube (where the
# cube cuts the body's sides, a method that assumes the lungs are surrounded by tissue on
# every side fails):

# %%
# NBVAL_CHECK_OUTPUT
volumes = np.array([r["lung_volume_ml"] for r in rows])
print(f"lung volume: {volumes.min() / 1000:.1f} to {volumes.max() / 1000:.1f} litres; "
      f"{sum(r['touches_border'] for r in rows)} of {len(rows)} masks touch the volume border")

# %% [markdown]
# ## Intensities inside and outside the lungs
# Lung parenchyma is mostly air (-1000 HU) with vessels and airway walls; the rest of the cube
# holds air outside the body, fat (about -100 HU), soft tissue (0 to 100 HU) and bone. The
# shaded band is the project's HU window, [-1000, 300]: everything of interest lies inside it.

# %%
inside = np.concatenate([c.ct_hu[c.mask > 0] for c in cases])
outside = np.concatenate([c.ct_hu[c.mask == 0] for c in cases])
bins = np.arange(-1100, 1510, 20)
fig, ax = plt.subplots(figsize=(viz.COL_IN, 2.2))
ax.hist(outside, bins=bins, density=True, alpha=0.6, label="outside the lungs", color="#0072B2")
ax.hist(inside, bins=bins, density=True, alpha=0.6, label="inside the lungs", color="#D55E00")
ax.axvspan(*config.HU_WINDOW, facecolor="#F0E442", alpha=0.35, edgecolor="0.3", lw=0.8,
           zorder=-1, label="HU window")
ax.set(xlabel="HU", ylabel="density", yscale="log", xlim=(-1100, 1500))
ax.legend()
viz.export_figure(fig, "01_hu_histograms")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"inside the lungs: {np.mean(inside < -500):.1%} of voxels below -500 HU, "
      f"median {np.median(inside):.0f} HU")

# %% [markdown]
# ## Mid slices in three planes
# Axial, coronal and sagittal slices through the centre of the lungs, the expert mask
# outlined. Pictures follow the radiological convention (patient's right on the image's left,
# anterior up in axial views), derived from each file's affine.

# %%
fig = viz.montage_three_planes(cases[0].ct_hu, cases[0].mask, cases[0].spacing_mm,
                               cases[0].affine, title=cases[0].case_id)
viz.export_figure(fig, "01_three_planes")
plt.show()

# %% [markdown]
# The same axial mid slice for every case shows how much anatomy varies across nine
# patients, and where the cube cuts the body.

# %%
ncol = 5
nrow = int(np.ceil(len(cases) / ncol))
fig, axes = plt.subplots(nrow, ncol, figsize=(viz.PAGE_IN, 1.45 * nrow + 0.2))
for ax, case in zip(axes.ravel(), cases):
    z = viz.busiest_slice(case.mask, case.affine, "axial")  # the axial slice with most lung
    viz.show_slice(ax, case.ct_hu, "axial", z, case.spacing_mm, case.affine, window="lung",
                   mask=case.mask, labels=False)
    ax.set_title(case.case_id, fontsize=7)
for ax in axes.ravel()[len(cases):]:
    ax.axis("off")
viz.export_figure(fig, "01_all_cases_axial")
plt.show()

# %% [markdown]
# ## Explore a volume yourself
# The slice viewer (used by every notebook that shows a volume) scrolls through any plane,
# switches HU window presets and overlays, and reads out the slice position and lung area.

# %%
# NBVAL_IGNORE_OUTPUT
viewer.SliceViewer(cases[0].ct_hu, cases[0].affine, mask=cases[0].mask, title=cases[0].case_id)

# %% [markdown]
# **What we learned.** All cases share one 5 mm grid and one axis order (the table's
# `axcodes`); HU values run from about -1000 to well above 1000; most lung voxels are below
# -500 HU (the fraction printed above), so a window of [-1000, 300] keeps all the contrast the
# task needs; lung volumes differ widely between patients (the range above). Notebook 02
# turns these volumes into network inputs.
