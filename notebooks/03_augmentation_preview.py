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
# new random variant of each training case: flips along any axis, rotations by 90° in any
# plane, a small shift, a mild smooth 3D elastic deformation, and Gaussian intensity noise.
# This notebook shows what those variants look like, proves that the CT and its mask always
# move together, and measures whether the pipeline can feed the network fast enough.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import augment, config, io, preprocess, synthetic, viz

viz.apply_style()
settings = config.get_profile()
folders = io.discover_cases(synthetic.resolve_data_dir())
case = io.load_case(folders[0])
x = preprocess.window_normalise(case.ct_hu, settings["hu_window"])
y = case.mask

# %% [markdown]
# The augmentation settings of the active profile (probabilities per sample and epoch):

# %%
# NBVAL_CHECK_OUTPUT
for key in ("p_flip", "p_rot90", "p_shift", "max_shift_vox", "p_elastic", "elastic_sigma_mm",
            "elastic_smooth_mm", "p_jitter", "jitter_sigma"):
    print(f"{key:>18} = {settings.get(key, config.AUGMENT_DEFAULTS.get(key))}")

# %% [markdown]
# ## The same case, eight random variants
# Each column is one draw of `augment_pair` (the function the training dataset calls), shown
# in the three planes as the *array* sees them (no reorientation: a flip really flips the
# picture). The mask is outlined in yellow on top of the transformed CT.

# %%
n_variants = 8
fig, axes = plt.subplots(3, n_variants, figsize=(viz.PAGE_IN, 3.0))
for j in range(n_variants):
    rng = np.random.default_rng([settings["seed"], 0, j])
    xa, ya = augment.augment_pair(x, y, rng, settings) if j else (x, y)
    for i, axis in enumerate(("axial", "coronal", "sagittal")):
        viz.show_slice(axes[i, j], xa, axis, 32, (5, 5, 5), case.affine, window=(0, 1),
                       mask=ya, labels=False)
    axes[0, j].set_title("original" if j == 0 else f"draw {j}", fontsize=7)
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
field = augment.elastic_field(x.shape, rng, settings["elastic_sigma_mm"],
                              settings["elastic_smooth_mm"])
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
# the share of mask voxels below the lung threshold must not change under any transform.
# A transform applied to one but not the other would send it towards the share of the
# whole volume.

# %%
# NBVAL_CHECK_OUTPUT
threshold = (-500 - config.HU_WINDOW[0]) / (config.HU_WINDOW[1] - config.HU_WINDOW[0])
original_share = float((x[y > 0] < threshold).mean())
shares = []
for j in range(50):
    xa, ya = augment.augment_pair(x, y, np.random.default_rng([1, j]), {**settings, "p_jitter": 0})
    shares.append(float((xa[ya > 0] < threshold).mean()))
    assert set(np.unique(ya)) <= {0, 1} and xa.shape == x.shape
print(f"mask voxels below -500 HU: original {original_share:.2f}, "
      f"augmented {min(shares):.2f} to {max(shares):.2f} (50 draws; volume share "
      f"{float((x < threshold).mean()):.2f})")

# %% [markdown]
# ## Can the pipeline keep up with the network?
# The training `PyDataset` draws a new variant of every case each epoch. If producing a batch
# took longer than a training step, the processor would sit idle. We time both: first the
# data set alone, a few batches of the profile's size.

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
# **What we learned.** Every transform keeps CT and mask aligned and the mask binary; a single
# thread of NumPy produces augmented samples many times faster than two cores can train on
# them, so no worker processes are needed (on a GPU, `workers=` in the profile adds threads).
