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
# A compact 3D U-Net learns to turn a 64³ CT cube into a lung probability per voxel. This
# notebook builds it block by block, defines the soft Dice loss it minimises, compiles it and
# fits it — and, because one network trained on six scans is fragile, trains what the project
# ships: **an ensemble of cross-validation members**, each from random weights. Every case is
# later scored by the member that never saw it (notebook 05); the members' averaged
# probability is the model the inference command uses.
#
# The code shown in this notebook is the package's own, displayed from its source
# (`viz.show_code`): what you read is exactly what runs. The active profile
# (`LUNGSEG_PROFILE`: `main`, the recipe, by default; `smoke` in the tests) fixes every
# setting; the run goes to the folder `LUNGSEG_RUN` names (`make all` makes a new
# `results/models/main_YYYYMMDD-HHMMSS/`; nothing is overwritten).

# %% tags=["parameters"]
PROFILE = None  # None: $LUNGSEG_PROFILE, else "main"

# %%
import matplotlib.pyplot as plt
import numpy as np

from lungseg_utils import config, dataio, ensemble, synthetic, viz
from lungseg_utils import unet  # imports Keras (TensorFlow backend) quietly
from lungseg_utils import train

viz.apply_style()
settings = config.get_profile(PROFILE)
run = config.active_run_dir()
trained = (run / "manifest.json").exists()  # an existing run: show its own settings
if trained:
    manifest = dataio.load_json(run / "manifest.json")
    settings = {**manifest["settings"], "folds": len(manifest["members"])}  # members made

# %% [markdown]
# ## The recipe
# One profile fixes everything, and `train_config.json` in each member's folder records it
# with the package versions and a SHA-256 of every input file. The number of epochs is part
# of the recipe, so the same command gives the same model on a busy or an idle machine.

# %%
# NBVAL_IGNORE_OUTPUT
keys = ("profile", "folds", "epochs", "batch_size", "samples_per_epoch", "learning_rate",
        "warmup_epochs", "lr_schedule", "mixed_precision", "checkpoint", "base_filters",
        "depth", "norm", "loss", "reg_l2", "dropout_bot", "seed")
print("settings of", "the existing run" if trained else "the new run", run.name)
for key in keys:
    print(f"{key:>18} = {settings.get(key, '–')}")
print(f"{'precision here':>18} = {config.training_precision(settings.get('mixed_precision'))}")
first = ensemble.member_runs(run)[0] if trained else None
init = dataio.load_json(first / "train_config.json").get("init_weights") if trained else None
print(f"{'start':>18} = " + (f"fine-tuned from {init['file']}" if init else "random weights"))

# %% [markdown]
# ## The residual block
# Every level of the U-Net is one block: two 3×3×3 convolutions, each followed by **group
# normalisation** (statistics of groups of channels within one sample: with two volumes per
# batch, batch normalisation's running statistics never settled in our first tries), and a
# **shortcut** that adds the block's input to its output, so that a block only has to learn
# a correction. Where the number of channels changes, a 1×1×1 convolution projects the input.
# The normalisation layer is `unet.GroupNorm`: Keras's `GroupNormalization`, the same numbers
# (a test compares them), computed as one scale and shift per channel: a bfloat16 training
# step a sixth shorter, measured in `benchmarks/RESULTS.md`.

# %%
viz.show_code(unet.residual_block)

# %% [markdown]
# ## The U-Net
# Four levels down (64 → 32 → 16 → 8 voxels, then the bottleneck at 4³) and four up. Each
# level down doubles the filters and halves the grid with max pooling; each level up doubles
# the grid (`UpSampling3D` and a 1×1×1 convolution, or `Conv3DTranspose` with
# `use_transpose`), **concatenates the encoder's output of the same level** (the skip
# connection that keeps fine detail) and applies a block. Every convolution carries L2
# weight decay; dropout follows the blocks. A 1×1×1 convolution with a sigmoid gives the
# probability, kept in float32 even when the rest computes in bfloat16.

# %%
viz.show_code(unet.build_unet)

# %% [markdown]
# One row per block (Keras's `net.summary()` lists every layer):

# %%
net = unet.build_from_settings(settings)
print(dataio.format_table(unet.level_table(net), {"block": "", "layers": "", "output": "",
                                                 "params": ","}))
print(f"{net.count_params():,} parameters, {unet.count_flops(net) / 1e9:.1f} GFLOP per forward pass")

# %% [markdown]
# ## The soft Dice loss
# The lungs fill a few percent of the cube, so a per-voxel loss is dominated by the easy
# background. The Dice coefficient measures overlap instead; its *soft* form uses the
# probabilities $p_i$ directly, so that it has a gradient, with the label $t_i \in \{0, 1\}$
# and a smoothing term $s = 1$ (an empty prediction of an empty mask scores 1):
#
# $$\mathcal{L} = 1 - \frac{2\sum_i t_i\,p_i + s}{\sum_i t_i + \sum_i p_i + s}$$
#
# computed over each volume of the batch, then averaged:

# %%
viz.show_code(unet.soft_dice_per_sample)

# %% [markdown]
# What it says for a perfect prediction, a prediction of 0.5 everywhere inside the lungs,
# and an empty one, on one training case:

# %%
# NBVAL_CHECK_OUTPUT
from lungseg_utils import preprocess  # noqa: E402

case = dataio.load_cases(synthetic.resolve_data_dir())[0]
t = preprocess.to_tensor(case.mask)[None].astype("float32")
for name, p in (("perfect", t), ("half inside", 0.5 * t), ("empty", 0 * t)):
    print(f"{name:>12}: loss {float(unet.DiceLoss()(t, p)):.3f}")

# %% [markdown]
# ## `compile` and `fit`
# Compiling attaches the optimiser (Adam), the loss and the metrics logged every epoch
# (Dice and IoU of the prediction thresholded at 0.5, as at test time):

# %%
viz.show_code(unet.compile_model)

# %% [markdown]
# The callbacks are a plain list: the learning-rate schedule (a short linear warm-up, then
# half a cosine down to 1 % at the last epoch) and the CSV log. (The `lungseg train` command
# adds backups that let a killed run continue where it stopped: `--resume RUN`.) With
# `checkpoint="best"` a checkpoint and early stopping watch the validation loss; the recipe
# keeps the last weights instead, so its validation cases are only logged.

# %%
viz.show_code(train.make_callbacks)

# %% [markdown]
# `fit` then runs the epochs: one pass over the augmented training samples (notebook 03's
# pipeline, drawn afresh every epoch), the validation cases scored after the epochs
# `train.validation_epochs` lists (the recipe: every 5th, the first and the last — as they
# choose nothing, scoring them less often draws the same curve cheaper and trains the same
# model).

# %%
viz.show_code(train.fit_model)

# %% [markdown]
# `train.train` runs these steps for one member — build and compile, fit, save (without the
# optimiser's state), score its test cases — and writes its run folder.
#
# ## Cross-validation: one member per fold
# The cases are dealt into seeded folds; member *i* is tested on fold *i* and trains on the
# rest. This is the whole loop:

# %%
viz.show_code(ensemble.train_members)

# %% [markdown]
# The folds of this run (a trained run's own, as its manifest records them; otherwise the
# seeded folds `ensemble.fold_splits` deals):

# %%
# NBVAL_IGNORE_OUTPUT
ids = [p.name for p in dataio.discover_cases(synthetic.resolve_data_dir())]
ids = ids[: settings.get("max_cases") or None]
splits = (dataio.load_json(run / "manifest.json")["members"] if trained else
          ensemble.fold_splits(ids, int(settings["folds"]), int(settings["seed"]),
                               settings["checkpoint"]))
for i, split in enumerate(splits):
    print(f"member {i}: trains on {len(split['train'])} cases, tested on {', '.join(split['test'])}")

# %% [markdown]
# ## Train the members
# `ensemble.train_main` runs the loop above into the run folder: `cv/fold_i/` (each member a
# normal run folder), `manifest.json` (the ensemble, with a SHA-256 of every member) and, at
# the top, member 0's split, settings, log and test metrics. A run that is already trained
# is not trained again (as below, for the committed reference). While it trains, every few
# epochs a line says how long an epoch takes here and how many minutes are left.

# %%
# NBVAL_IGNORE_OUTPUT
result = ensemble.train_main(run, profile=settings["profile"], verbose="compact")
where = dataio.portable_path(run)
print(f"trained {len(result['manifest']['members'])} members into {where} in "
      f"{result['wall_s'] / 60:.1f} min" if result["trained"] else
      f"{where} holds a finished run: nothing trained here; its curves follow")

# %% [markdown]
# The run's artifacts (the ensemble's manifest beside member 0's run files):

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(n for n in (*train.RUN_ARTIFACTS, "manifest.json") if (run / n).exists()))

# %% [markdown]
# ## Learning curves
# Loss and Dice on the training samples (augmented, with dropout active; solid) and on each
# member's validation cases (as they are; dashed), one colour per member, from each member's
# first epoch (from random weights with the recipe; a run fine-tuned from earlier weights
# says so in its settings above); a dot marks the epoch whose weights each member kept. With
# `checkpoint="last"` the validation cases are the member's unseen test fold, so the dashed
# Dice is an out-of-fold learning curve: how much each extra epoch still buys.

# %%
members = ensemble.member_runs(run)
logs = [np.atleast_1d(np.genfromtxt(m / train.LOG_NAME, delimiter=",", names=True))
        for m in members]
last = settings.get("checkpoint") == "last"   # the weights kept: the last, or the best val_loss
kept = [len(log) - 1 if last else int(np.nanargmin(log["val_loss"])) for log in logs]
fig, axes = plt.subplots(1, 2, figsize=(viz.COL_IN, 1.9))   # printed one column wide
for i, (log, k) in enumerate(zip(logs, kept)):
    epoch, colour = log["epoch"] + 1, f"C{i}"
    for ax, key in zip(axes, ("loss", "dice")):
        ax.plot(epoch, log[key], color=colour, lw=0.9, label=f"member {i}" if i == 0 else str(i))
        scored = ~np.isnan(log[f"val_{key}"])    # epochs with validation (validate_every)
        ax.plot(epoch[scored], log[f"val_{key}"][scored], color=colour, lw=0.9, ls="--")
        ax.plot(epoch[k], log[f"val_{key}"][k], "o", color=colour, ms=3.5)
axes[0].set(xlabel="epoch", ylabel="Dice loss", yscale="log")
axes[1].set(xlabel="epoch", ylabel="Dice", ylim=(0.5, 1.0))
fig.tight_layout(w_pad=0.8, rect=(0, 0.1, 1, 1))          # room for the legend below
fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=len(logs),
           frameon=False, handlelength=1.2)
viz.export_figure(fig, "04_training_curves")
plt.show()

# %% [markdown]
# What each member cost, which epoch it kept, and its Dice on its own test fold (64³ grid;
# notebook 05 adds distances in millimetres, the native grid and the classical baseline):

# %%
# NBVAL_IGNORE_OUTPUT
for i, (m, log) in enumerate(zip(members, logs)):
    metrics = dataio.load_json(m / "test_metrics.json")
    wall_s, k = metrics["training"]["wall_s_this_session"], kept[i]
    cases = ", ".join(f"{r['case_id']} {r['dice']:.4f}" for r in metrics["cases"])
    print(f"member {i}: {len(log)} epochs in {wall_s / 60:.1f} min ({wall_s / len(log):.1f} s "
          f"an epoch), kept epoch {k + 1} (val Dice {log['val_dice'][k]:.4f}); "
          f"test fold: {cases}")

# %% [markdown]
# **What we learned.** The whole training is a handful of readable steps — a residual
# block, the U-Net assembled from it, a loss that measures overlap, `compile`, `fit` with a
# plain list of callbacks, and a loop over folds — and what they cost is measured on this
# machine before they start. The dashed curves above are the honest ones: each member's
# Dice on cases it never trained on, epoch by epoch; where they still rise at the last
# epoch, more epochs would still buy Dice. Notebook 05 scores every case that way, on both
# grids, against a classical pipeline.
