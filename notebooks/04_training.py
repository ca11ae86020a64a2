# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
# ---

# %% [markdown]
# # 04 · Training the 3D U-Net
#
# A compact 3D U-Net learns to turn a 64³ CT cube into a lung probability per voxel. This
# notebook trains it with the active profile (`LUNGSEG_PROFILE`: `quick` by default, about
# 25 minutes on two CPU cores; `smoke` in the tests; `full`, the original project's 150
# epochs, for a GPU), then shows what happened epoch by epoch. Every run lands in a new
# folder `results/models/run_YYYYMMDD-HHMMSS/`; nothing is overwritten.

# %% tags=["parameters"]
PROFILE = None  # None: $LUNGSEG_PROFILE, else "quick"
PROMOTE_TO_REFERENCE = False  # copy the finished run to results/reference/ (asks nothing twice)

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, ensemble, io, viz
from lungseg_utils import unet  # imports Keras (TensorFlow backend) quietly
from lungseg_utils import train

viz.apply_style()
settings = config.get_profile(PROFILE)
PROMOTE_TO_REFERENCE = PROMOTE_TO_REFERENCE or os.environ.get("LUNGSEG_PROMOTE") == "1"

# %% [markdown]
# ## The settings of this run
# The profile fixes everything; `train_config.json` in the run folder records it together
# with the package versions and a SHA-256 of every input file.

# %%
for key in ("profile", "base_filters", "depth", "norm", "use_transpose", "reg_l2", "dropout_enc",
            "dropout_dec", "dropout_bot", "loss", "learning_rate", "batch_size",
            "samples_per_epoch", "epochs", "mixed_precision", "seed"):
    print(f"{key:>18} = {settings[key]}")

# %% [markdown]
# ## The network
# Four levels down (64 → 32 → 16 → 8 → 4 voxels) and four up. Every block has two 3×3×3
# convolutions with group normalisation and a **residual shortcut** (a 1×1×1 convolution
# where the number of channels changes); every convolution carries L2 weight decay; dropout
# follows encoder, bottleneck and decoder blocks. Upsampling is `UpSampling3D` + 1×1×1
# convolution (or `Conv3DTranspose` with `use_transpose`). A 1×1×1 convolution with a sigmoid
# gives the probability.
#
# Why group normalisation: with two volumes per batch, batch normalisation's running
# statistics never settle (validation Dice stayed near 0.8 in our first tries), and without
# any normalisation training collapsed to the empty mask; groups of channels normalise each
# sample on its own.

# %%
net = unet.build_from_settings(settings)
net.summary(line_length=110)
print(f"{net.count_params():,} parameters, {unet.count_flops(net) / 1e9:.1f} GFLOP per forward pass")

# %% [markdown]
# ## Train
# Dice loss, Adam, a patient-level split (`split.json`), the augmentation of notebook 03 on
# every training sample, validation on untouched cases. Callbacks: ReduceLROnPlateau,
# EarlyStopping, ModelCheckpoint (the best `val_loss` → `best_model.keras`), CSVLogger, and
# BackupAndRestore, so that a run killed half-way continues with `--resume`.

# %%
# NBVAL_IGNORE_OUTPUT
run_dir = train.train(profile=settings["profile"], verbose=2)
print("run folder:", run_dir.relative_to(config.REPO_ROOT) if run_dir.is_relative_to(config.REPO_ROOT) else run_dir.name)

# %% [markdown]
# Every artifact the run wrote:

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")))

# %% [markdown]
# ## Learning curves
# Loss, Dice and IoU on the training samples (augmented, with dropout active) and on the
# validation cases (as they are), and the learning rate that ReduceLROnPlateau lowered.

# %%
log = np.genfromtxt(run_dir / train.LOG_NAME, delimiter=",", names=True)
log = np.atleast_1d(log)
epoch = log["epoch"] + 1
fig, axes = plt.subplots(1, 4, figsize=(viz.PAGE_IN, 1.9))
for ax, key in zip(axes[:3], ("loss", "dice", "iou")):
    ax.plot(epoch, log[key], label="training", color="#0072B2")
    ax.plot(epoch, log[f"val_{key}"], label="validation", color="#D55E00")
    ax.set(xlabel="epoch", title=key if key != "loss" else "Dice loss")
axes[0].set_yscale("log")
axes[1].set_ylim(max(0.0, min(log["val_dice"].min(), log["dice"].min()) - 0.02), 1.0)
axes[2].set_ylim(max(0.0, min(log["val_iou"].min(), log["iou"].min()) - 0.02), 1.0)
axes[1].legend(loc="lower right")
axes[3].plot(epoch, log["learning_rate"], color="0.3")
axes[3].set(xlabel="epoch", title="learning rate", yscale="log")
viz.export_figure(fig, "04_training_curves")
plt.show()

# %% [markdown]
# What the run cost and where the best epoch was:

# %%
cfg = io.load_json(run_dir / "train_config.json")
metrics = io.load_json(run_dir / "test_metrics.json")
best = int(np.argmin(log["val_loss"]))
wall_s = metrics["training"]["wall_s_this_session"]
print(f"{len(log)} epochs in {wall_s / 60:.1f} min ({wall_s / len(log):.1f} s an epoch); "
      f"best epoch {best + 1}: val_loss {log['val_loss'][best]:.4f}, val Dice {log['val_dice'][best]:.4f}")

# %% [markdown]
# ## Held-out test cases of this run's split
# `test_metrics.json`: Dice and IoU of `best_model.keras` on the split's test patients,
# which training and model selection never saw (on the 64³ grid; notebook 05 adds
# distances in millimetres, the native grid and the classical baseline).

# %%
split = io.load_json(run_dir / "split.json")
print({part: split[part] for part in ("train", "val", "test")})
for row in metrics["cases"]:
    print(f"  {row['case_id']}: Dice {row['dice']:.4f}, IoU {row['iou']:.4f}")
print(f"mean Dice {metrics['mean_dice']:.4f}, mean IoU {metrics['mean_iou']:.4f}")

# %% [markdown]
# ## Why the quick profile looks the way it does
# On two CPU cores a training step at batch 2 costs about 0.8 s with the original network
# (base 16, 5.4 M parameters), and the first step another 8 s of graph tracing. The quick
# profile keeps the original network and spends its budget on *more augmented samples*
# rather than on a smaller network: 12 augmented samples an epoch (each training case about
# twice), up to 150 epochs, early stopping after 30 epochs without a better validation loss.
# Mixed bfloat16 was about 1.2× faster here (this CPU has AVX-512 BF16 but no AMX) but leaves
# the saved model computing in bfloat16, so float32 stays the default; `make bench` measures
# both. A model saved by this run holds only standard Keras layers, so
# `keras.saving.load_model(path)` opens it with no custom objects.
#
# The committed reference model (`results/reference/`) is one such quick run; set
# `PROMOTE_TO_REFERENCE = True` (or `LUNGSEG_PROMOTE=1`) to make a new run the reference.

# %%
if PROMOTE_TO_REFERENCE:
    print("reference now from", ensemble.promote_run(run_dir, overwrite=True).name, "<-", run_dir.name)
else:
    print("results/reference/ left as it is")
