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
# # 03 · Augmentation preview: many plausible scans from a few real ones
#
# Nine patients are far too few to learn lung shape from, so every epoch shows the network a
# new random variant of each training case. This notebook lists the augmentation pipeline
# that trains the reference (the `main` profile), shows what its variants look like, proves
# that the CT and its mask always move together, and measures whether the pipeline can feed
# the network fast enough.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import augment, config, dataio, preprocess, synthetic, viz

viz.apply_style()
recipe = config.get_profile("main")   # the profile that trains the reference: previewed here
settings = config.get_profile()       # the active profile: the speed check at the end
folders = dataio.discover_cases(synthetic.resolve_data_dir())
case = dataio.load_case(folders[0])
x = preprocess.window_normalise(case.ct_hu, recipe["hu_window"])
y = case.mask

# %% [markdown]
# ## The pipeline
# `augment.PIPELINE` is the list of steps, in the order they are applied, each with the
# settings key of its probability (per sample; for the flips, per axis) and of its other
# arguments, and whether it changes the CT only (intensities) or CT and mask alike
# (geometry). With the values of the `main` profile:

# %%
# NBVAL_CHECK_OUTPUT
columns = dict.fromkeys(["step", "transform", "probability", "settings", "applies to"], "")
print(dataio.format_table(augment.pipeline_rows(recipe), columns))

# %% [markdown]
# `augment_pair`, which the training data set calls for every sample, is a loop over that
# list. Adding an augmentation means writing its transform, one entry in the list and its
# defaults in `config`.

# %%
viz.show_code(augment.augment_pair)

# %% [markdown]
# ## The same case, seven random variants
# Each column after the first is one draw of `augment_pair` with the `main` settings. Each
# row is a slice across one *array* axis, shown as the array holds it (no reorientation: a
# flip really flips the picture); in the original these are the axial, coronal and
# sagittal planes (the row labels). A 90° rotation moves anatomy from one array axis to
# another; a panel that then shows another plane says so ("now sagittal"). Which plane that
# is comes from the draw itself: the same draw (same seed) applied to three coordinate
# ramps, one along each original axis, shows which ramp now runs along each array axis.
# The mask is outlined in yellow.

# %%
ramps = np.indices(x.shape, dtype=np.float32) / (x.shape[0] - 1)


def planes_after(seed):
    """The anatomical plane across each array axis after the draw ``seed``."""
    moved = [augment.augment_pair(r, y, np.random.default_rng(seed), recipe)[0] for r in ramps]
    core = (slice(16, 48),) * 3   # away from the borders that shifts and crops fill with air
    slope = [[abs(np.diff(m[core], axis=k).mean()) for m in moved] for k in range(3)]
    return [viz.plane_name(case.affine, int(np.argmax(s))) for s in slope]


# %%
n_variants, rows = 8, (2, 1, 0)   # array axes sliced: axial, coronal, sagittal in the original
fig, axes = plt.subplots(3, n_variants, figsize=(viz.PAGE_IN, 3.3))
for j in range(n_variants):
    seed = [recipe["seed"], 0, j]
    xa, ya = augment.augment_pair(x, y, np.random.default_rng(seed), recipe) if j else (x, y)
    planes = planes_after(seed) if j else [viz.plane_name(case.affine, k) for k in range(3)]
    for i, k in enumerate(rows):
        viz.show_slice(axes[i, j], xa, k, 32, (5, 5, 5), case.affine, window=(0, 1), mask=ya,
                       labels=False)
        if planes[k] != viz.plane_name(case.affine, k):
            axes[i, j].text(0.5, 0.03, f"now {planes[k]}", transform=axes[i, j].transAxes,
                            ha="center", va="bottom", color="white", fontsize=6,
                            bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
    axes[0, j].set_title("original" if j == 0 else f"draw {j}", fontsize=7)
for i, k in enumerate(rows):
    axes[i, 0].text(-0.08, 0.5, f"{viz.plane_name(case.affine, k)}\n(array axis {k})",
                    transform=axes[i, 0].transAxes, rotation=90, ha="right", va="center")
viz.export_figure(fig, "03_augmentation_grid")
plt.show()

# %% [markdown]
# ## The elastic field
# A random displacement field, smoothed by a 40 mm Gaussian and scaled so that no voxel
# moves more than 3 mm: enough to vary the shape of the lungs a little, never enough to
# tear anatomy. Arrows show the in-plane displacement on the middle axial slice (magnified
# ten times), the colour its length. A few millimetres are less than one 5 mm voxel, so
# "before" and "after" look alike: the third panel shows what changed (after minus before).

# %%
rng = np.random.default_rng(7)
field = augment.elastic_field(x.shape, rng, recipe["elastic_sigma_mm"],
                              recipe["elastic_smooth_mm"])
warped_x, warped_y = augment.elastic_deform(x, y, rng, field=field)
length_mm = 5.0 * np.sqrt((field ** 2).sum(axis=0))
gx, gy = np.meshgrid(np.arange(0, 64, 4), np.arange(0, 64, 4), indexing="ij")
diff = viz.display_slice(warped_x - x, case.affine, "axial", 32)   # what the field moved

# %%
fig, axes = plt.subplots(1, 3, figsize=(viz.PAGE_IN, 2.4))
im = axes[0].imshow(length_mm[:, :, 32].T, cmap="viridis")
axes[0].quiver(gx, gy, field[0, ::4, ::4, 32] * 10, field[1, ::4, ::4, 32] * 10,
               angles="xy", scale_units="xy", scale=1, color="w", width=0.004)
fig.colorbar(im, ax=axes[0], label="displacement (mm)", shrink=0.8)
axes[0].set(title="field, axial slice 32", xticks=[], yticks=[])
viz.show_slice(axes[1], x, "axial", 32, (5, 5, 5), case.affine, window=(0, 1), mask=y)
axes[1].set_title("before")
lim = float(np.abs(diff).max()) or 1.0
im2 = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
fig.colorbar(im2, ax=axes[2], label="after − before", shrink=0.8)
axes[2].set(title="what moved", xticks=[], yticks=[])
viz.export_figure(fig, "03_elastic_field")
plt.show()

# %% [markdown]
# ## Proof that CT and mask move together
# On this data the mask is almost exactly "air inside the chest", so one honest check is
# that the *transformed* mask still covers the same low-HU voxels of the *transformed* CT:
# the share of mask voxels below the lung threshold must not change under any geometric
# transform. A transform applied to one but not the other would send it towards the share
# of the whole volume. The CT-only steps change intensities, not positions, and would move
# the threshold: they are switched off for this check.

# %%
# NBVAL_CHECK_OUTPUT
threshold = (-500 - config.HU_WINDOW[0]) / (config.HU_WINDOW[1] - config.HU_WINDOW[0])
original_share = float((x[y > 0] < threshold).mean())
geometry_only = {**recipe, **{step.p: 0.0 for step in augment.PIPELINE if step.ct_only}}
shares = []
for j in range(50):
    xa, ya = augment.augment_pair(x, y, np.random.default_rng([1, j]), geometry_only)
    shares.append(float((xa[ya > 0] < threshold).mean()))
    assert set(np.unique(ya)) <= {0, 1} and xa.shape == x.shape
print(f"mask voxels below -500 HU: original {original_share:.2f}, "
      f"augmented {min(shares):.2f} to {max(shares):.2f} (50 draws; volume share "
      f"{float((x < threshold).mean()):.2f})")

# %% [markdown]
# ## Can the pipeline keep up with the network?
# The training `PyDataset` draws a new variant of every case each epoch. If producing a batch
# took longer than a training step, the processor would sit idle. We time both, with the
# active profile's settings (those of `main` unless `LUNGSEG_PROFILE` names another): first
# the data set alone, a few batches of the profile's size.

# %%
from lungseg_utils import dataset as ds  # noqa: E402  (imports Keras quietly)

data = ds.LungDataset(folders[: settings["max_cases"] or None], batch_size=settings["batch_size"],
                      settings=settings, seed=settings["seed"],
                      samples_per_epoch=4 * settings["batch_size"])
t0 = time.perf_counter()
for i in range(len(data)):
    data[i]
pipeline_sps = len(data) * settings["batch_size"] / (time.perf_counter() - t0)

# %% [markdown]
# Then the network's training step on one of those batches (after a first step that traces
# the graph). The numbers depend on the machine and on whatever else it is doing, so they
# are shown, not checked here: `make bench` measures both with the reference settings and
# checks that the pipeline stays at least five times faster than the network.

# %%
# NBVAL_IGNORE_OUTPUT
from lungseg_utils import unet  # noqa: E402

net = unet.compile_model(unet.build_from_settings(settings), settings["loss"], settings["learning_rate"])
xb, yb = data[0]
net.train_on_batch(xb, yb)  # the first step traces the graph
t0 = time.perf_counter()
for _ in range(3):
    net.train_on_batch(xb, yb)
model_sps = 3 * settings["batch_size"] / (time.perf_counter() - t0)
print(f"pipeline {pipeline_sps:.1f} samples/s, network {model_sps:.2f} samples/s: "
      f"the pipeline is {pipeline_sps / model_sps:.0f}x faster")

# %% [markdown]
# **What we learned.** The augmentation is one list, `augment.PIPELINE`, which the training
# data set and this notebook both read. Every transform keeps CT and mask aligned and the
# mask binary; a single thread of NumPy produces augmented samples many times faster than
# two cores can train on them, so no worker processes are needed (on a GPU, `workers=` in
# the profile adds threads).
