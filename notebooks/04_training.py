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
# # 04 · Training the 3D U-Net
#
# A compact 3D U-Net learns to turn a 64³ CT cube into a lung probability per voxel. One
# network trained on six scans is fragile, so this notebook trains what the project ships:
# **an ensemble of cross-validation members**. The nine cases are split into folds; each
# member trains on the other folds, so every case is later scored by a member that never
# saw it (notebook 05), and the members' averaged probability is the model the inference
# command uses. The active profile (`LUNGSEG_PROFILE`: `main` by default, `smoke` in the
# tests) fixes the network, the number of folds and a wall-clock budget per member that
# holds on any CPU: the train command times a few steps first and plans the epochs that fit.
#
# The run goes to the folder `LUNGSEG_RUN` names (`make all` makes a new
# `results/models/main_YYYYMMDD-HHMMSS/`; nothing is overwritten), and notebooks 05, 06, the
# viewer and the report then evaluate exactly this run. Pointed at a run that is already
# trained (`make all RUN=results/reference`, the committed reference), nothing is trained
# and this notebook shows how that run was trained.

# %% tags=["parameters"]
PROFILE = None  # None: $LUNGSEG_PROFILE, else "main"
PROMOTE_TO_REFERENCE = False  # copy the finished run to results/reference/ (replaces it)

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, ensemble, io, viz
from lungseg_utils import unet  # imports Keras (TensorFlow backend) quietly
from lungseg_utils import train

viz.apply_style()
settings = config.get_profile(PROFILE)
run = config.active_run_dir()
PROMOTE_TO_REFERENCE = PROMOTE_TO_REFERENCE or os.environ.get("LUNGSEG_PROMOTE") == "1"

# %% [markdown]
# ## The settings of this run
# The profile fixes everything; `train_config.json` in the run folder records it together
# with the package versions and a SHA-256 of every input file.

# %%
trained = (run / "manifest.json").exists()  # an existing run: show its own settings
if trained:
    manifest = io.load_json(run / "manifest.json")
    settings = {"folds": len(manifest["members"]), **manifest["settings"]}
print("settings of", "the existing run" if trained else "the new run", "in", run.name)
first = ensemble.member_runs(run)[0] if trained else None
init = io.load_json(first / "train_config.json").get("init_weights") if trained else None
if init:  # fine-tuned members: trained on from an earlier member's weights
    print("member 0 was fine-tuned from", init["file"])
for key in ("profile", "folds", "budget_min", "base_filters", "depth", "norm", "use_transpose",
            "reg_l2", "dropout_enc", "dropout_dec", "dropout_bot", "loss", "learning_rate",
            "lr_schedule", "batch_size", "samples_per_epoch", "epochs", "checkpoint", "seed"):
    print(f"{key:>18} = {settings.get(key, '–')}")

# %% [markdown]
# ## The network
# One row per block (Keras's `net.summary()` lists all of its layers). Four levels down (64 → 32 → 16 → 8 → 4 voxels) and four up. Every block has two 3×3×3
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
print(io.format_table(unet.level_table(net), {"block": "", "layers": "", "output": "",
                                              "params": ","}))
print(f"{net.count_params():,} parameters, {unet.count_flops(net) / 1e9:.1f} GFLOP per forward pass")

# %% [markdown]
# ## Train the members
# Dice loss, Adam, K seeded folds (`ensemble.fold_splits`): member *i* is tested on fold *i*
# and trains on the rest, with the augmentation of notebook 03 on every sample. With
# `checkpoint="last"` (the `main` and `ensemble` profiles) a member keeps its final weights
# and its test fold is only *logged* as validation, never used to choose anything; with
# `"best"` it keeps one case of the other folds to choose its checkpoint (the best
# `val_loss`). Before each member the train command times three steps on this machine and
# says what the profile costs here; with a budget it plans as many epochs as fit, with a
# cosine learning-rate schedule over them, and stops gracefully when time is up.
# `ensemble.train_main` writes the run: `cv/fold_i/` (each member a normal run folder:
# `split.json`, `train_config.json`, `training_log.csv`, `best_model.keras`,
# `final_model.keras`, `test_metrics.json`), `manifest.json` (the ensemble) and, at the top,
# member 0's split, settings, log and test metrics (its model stays in `cv/`: no model file is
# kept twice).

# %%
# NBVAL_IGNORE_OUTPUT
result = ensemble.train_main(run, profile=settings["profile"], verbose="compact")
where = run.relative_to(config.REPO_ROOT) if run.is_relative_to(config.REPO_ROOT) else run.name
print(f"trained {len(result['manifest']['members'])} members into {where} in "
      f"{result['wall_s'] / 60:.1f} min" if result["trained"] else
      f"{where} was already trained: nothing trained, showing how it was trained")

# %% [markdown]
# The run's artifacts (the ensemble's manifest beside member 0's run files):

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(n for n in (*train.RUN_ARTIFACTS, "manifest.json") if (run / n).exists()))

# %% [markdown]
# ## Learning curves
# Loss and Dice on the training samples (augmented, with dropout active; solid) and on each
# member's validation case (as it is; dashed), one colour per member; a dot marks the epoch
# whose weights each member kept. (The learning rate follows the profile's schedule: the
# plan printed above.)

# %%
members = ensemble.member_runs(run)
logs = [np.atleast_1d(np.genfromtxt(m / train.LOG_NAME, delimiter=",", names=True))
        for m in members]
last = settings.get("checkpoint") == "last"   # the weights kept: the last, or the best val_loss
kept = [len(log) - 1 if last else int(np.argmin(log["val_loss"])) for log in logs]
fig, axes = plt.subplots(1, 2, figsize=(viz.COL_IN, 1.9))   # printed one column wide
for i, (log, k) in enumerate(zip(logs, kept)):
    epoch, colour = log["epoch"] + 1, f"C{i}"
    for ax, key in zip(axes, ("loss", "dice")):
        ax.plot(epoch, log[key], color=colour, lw=0.9, label=f"member {i}" if i == 0 else str(i))
        ax.plot(epoch, log[f"val_{key}"], color=colour, lw=0.9, ls="--")
        ax.plot(epoch[k], log[f"val_{key}"][k], "o", color=colour, ms=3.5)
low = np.percentile(np.concatenate([log["val_dice"] for log in logs]), 5)
axes[0].set(xlabel="epoch", ylabel="Dice loss", yscale="log")
axes[1].set(xlabel="epoch", ylabel="Dice", ylim=(max(0.0, low - 0.01), 1.0))
fig.tight_layout(w_pad=0.8, rect=(0, 0.1, 1, 1))          # room for the legend below
fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=len(logs),
           frameon=False, handlelength=1.2)
viz.export_figure(fig, "04_training_curves")
plt.show()

# %% [markdown]
# What each member cost, which epoch it kept, and its Dice on its own test fold (64³
# grid; notebook 05 adds distances in millimetres, the native grid and the classical baseline):

# %%
for i, (m, log) in enumerate(zip(members, logs)):
    metrics = io.load_json(m / "test_metrics.json")
    wall_s, k = metrics["training"]["wall_s_this_session"], kept[i]
    cases = ", ".join(f"{r['case_id']} {r['dice']:.4f}" for r in metrics["cases"])
    print(f"member {i}: {len(log)} epochs in {wall_s / 60:.1f} min ({wall_s / len(log):.1f} s "
          f"an epoch), kept epoch {k + 1} (val Dice {log['val_dice'][k]:.4f}); "
          f"test fold: {cases}")

# %% [markdown]
# ## Why the main profile looks the way it does
# The plan printed above says what a training step costs on this machine; `make bench`
# measures it on AVX-512 and AVX2-only CPUs side by side (README). TensorFlow switches its
# fast oneDNN kernels on by itself only on CPUs with AVX-512 VNNI or newer, so
# `lungseg_utils.config` asks for them everywhere: on an AVX2 laptop that makes training
# several times faster (the "before" column of the benchmark). The first step of each member
# adds some seconds of graph tracing. The main profile trains the reference's network (base 16,
# depth 4) but gives each member a wall-clock budget instead of a fixed number of epochs,
# with the learning rate decayed along a cosine over the epochs the budget allows, so that
# the main job takes about as long on any laptop: a faster CPU buys more epochs, not a
# longer wait. The committed reference went further: its members first trained for the
# quick profile's epochs, then were fine-tuned (the `finetune` profile) with augmentation
# along the axes in which real scans differ (its settings are printed at the top when
# `LUNGSEG_RUN` is the reference). The members are the ensemble: averaging them removes
# most of what one unlucky training run gets wrong.
# A model saved by this run holds only standard Keras layers, so
# `keras.saving.load_model(path)` opens it with no custom objects.
#
# The committed reference (`results/reference/`) is one such run; set
# `PROMOTE_TO_REFERENCE = True` (or `LUNGSEG_PROMOTE=1`) to make this run the reference.

# %%
if PROMOTE_TO_REFERENCE and run != config.REFERENCE_DIR:
    print("reference now from", ensemble.promote_main(run, overwrite=True).name, "<-", run.name)
else:
    print("results/reference/ left as it is")

# %% [markdown]
# **What we learned.** Training is the slow step on a CPU, and its cost is measured before it
# starts (the plan above) rather than guessed; a budget with a schedule fitted to it keeps
# every run's artifacts valid however early it stops; the curves above show whether the
# members were still improving when they stopped, and each member's Dice on its own unseen
# fold (printed above) is the first honest number. Notebook 05 evaluates every case that way.
