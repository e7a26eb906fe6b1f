# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Fine-tuning one scenario
#
# **What this notebook does.** It trains the segmentation U-Net from one initialisation and
# shows its curves and its numbers. It is **one template, run once per scenario** by
# `pneumo reproduce`: papermill sets `scenario`, and `run_name` for the study runs of
# notebooks 07-10.
#
# **Why.** The paper's question is whether weights learned by an autoencoder on the same
# X-rays (notebook 03) make a better starting point than random weights or an ImageNet
# encoder. Its six initialisations (its Table 4; registry
# `pneumolib.models.scenarios.SCENARIOS`):
#
# | scenario | the paper's label |
# |---|---|
# | `resnet50` | ResNet-50 Encoder (ImageNet, segmentation_models_pytorch U-Net) |
# | `ae_encoder` | Pretrained encoder only (X-ray autoencoder encoder, random decoder) |
# | `ae_encoder_mask_decoder` | Pretrained encoder and decoder (X-ray AE encoder, mask AE decoder) |
# | `random` | Randomly initialized (the benchmark) |
# | `ae_full` | Autoencoder weights (X-ray AE encoder and decoder) |
# | `ae_full_frozen` | Autoencoder weights (frozen encoder) |
#
# Training follows the paper: BCE + Dice loss, Adam, at most `max_epochs` epochs, and early
# stopping on the validation loss (min delta 0.001, patience 5). After every epoch the model
# is also scored on the test split, as the paper's figures plot. The reported numbers come
# from the checkpoint with the lowest validation loss, evaluated once more on validation and
# test (`metrics.json`).
#
# Two settings of the `smoke` and `demo` profiles differ from the paper:
# - `resnet50` is a ResNet-18 stand-in (in `demo` with a halved decoder), so that it fits a
#   CPU. When the ImageNet weights cannot be downloaded, it trains from random weights with
#   a loud warning. Table 4's note says which.
# - The output bias starts at the log-odds of 1 % foreground (`head_prior`). Without it a
#   small U-Net can sit at "every mask empty" for many epochs. The `paper` profile keeps 0.
#
# **Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The *Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty prediction, averaged over images; predicting every mask empty already scores the share of empty test images, the all-empty baseline that this notebook computes from its test split and shows beside every Kaggle score. The two cannot be compared.

# %%
from pneumolib import paths, runio
from pneumolib.config import notebook_config
from pneumolib.models import scenarios
from pneumolib.reporting import figures, tables
from pneumolib.training import runs

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed
scenario = "random"  # one of pneumolib.models.scenarios.ALL_SCENARIOS
run_name = ""  # results folder under results/<profile>/; empty: the scenario name

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %% [markdown]
# The scenario: its architecture, where the encoder and decoder weights come from (`None`
# means random, or ImageNet for `resnet50`), whether the encoder is frozen, and the paper's
# Table 4 numbers.

# %%
sc = scenarios.get_scenario(scenario)
run_dir = paths.results_dir(cfg.name) / (run_name or scenario)
sc

# %% [markdown]
# ## Training
#
# The `ae_*` scenarios load the autoencoder weights of notebook 03 from
# `results/<profile>/ae_xray/` and `ae_mask/`. `ae_full_frozen` keeps the encoder and the
# bottleneck fixed, with their BatchNorm statistics frozen too.
#
# On one device this cell trains right here, with a live progress bar (a line per epoch
# when papermill runs it). Some settings ask for several processes, e.g. `devices=2` with
# `strategy="ddp"`, as the `paper` profile does on a dual-GPU box; Lightning cannot start
# those from inside a notebook. The cell then runs the same training as `pneumo train` in
# child processes started and watched by torchrun (or by `launcher`, e.g. `srun`), shows
# their log here as it comes, and reads the results back from the run folder
# (`pneumolib.training.launch`). If one of them dies, the others are stopped and the cell
# fails naming the rank; interrupting the cell ends them all.
#
# **Interrupted?** Run the cell again: a training interrupted in any way (Ctrl-C, a kernel
# restart, a power cut) continues from its last finished epoch, and its numbers end up the
# same as an uninterrupted run's; the cell says from which epoch it resumed. A run that
# already finished with the same settings, data and code is read back instead of trained
# again; one from other settings starts afresh, and the cell says why.

# %%
summary = runs.train_scenario(cfg, scenario, out=run_dir)

# %% [markdown]
# ## Per epoch: the four panels of Figures 5-7 (read back from `epochs.csv`)
#
# The panels: (a) train loss, (b) validation loss, (c) pooled test Dice, (d) pooled test IoU.
# There is one point per epoch, counted from 1. The star marks the epoch with the lowest
# validation loss, which is the checkpoint that gets reported.
#
# **What to look for:**
# - **(b), the star.** Early stopping ends the run 5 epochs (`patience`) after the last
#   improvement of the validation loss by at least 0.001, unless it reaches `max_epochs`
#   first. The star is simply the lowest validation loss, so it sits at that improvement or
#   at a later, smaller one.
# - **(c) and (d): the gap between the test value at the star and the peak of the test
#   curve.** The peak is picked by looking at the test split, so it flatters the model. The
#   star is picked on validation, so it is honest. Table 4 (notebook 05) shows both
#   (`test_dice_peak` beside `dice_pooled`).
# - **(a) against (b).** Train loss is averaged over the epoch while the weights change, with
#   augmentation on. Validation loss is measured after the epoch. Early on, (a) can sit above
#   (b).
# - **A test Dice flat at 0.** The model predicts every mask empty.

# %%
run = runio.read_run(run_dir)
fig = figures.figure_group({scenario: run}, [scenario], f"{sc.label} ({scenario})")

# %% [markdown]
# ## The best checkpoint on validation and test
#
# Rows are metrics. The columns are `val`, `test` and `paper` (the paper's Table 4 number).
# - `dice_pooled` / `iou_pooled`: the numbers to set against the paper's column. The paper
#   measured real SIIM-ACR, so on the phantom compare the ordering of scenarios, not the
#   levels.
# - `dice_per_image`: the Kaggle score. Read it against `empty_baseline_dice_per_image`, the
#   score of predicting every mask empty on the same split.
# - `dice_positive`: mean Dice over the positive images only.
# - `auc`, `sensitivity`, `specificity`: the image-level view. An image counts as positive
#   when its predicted mask is non-empty; the AUC ranks images by their largest pixel
#   probability.
#
# **What to look for:** `val` and `test` should be close. A Kaggle score *below* the
# all-empty baseline means that the false positives on empty images cost more than the
# masks the model finds.

# %%
tables.run_summary(run)

# %% [markdown]
# ## Beyond the paper, per epoch
#
# The panels: the Kaggle score (the dashed line is the all-empty prediction on this test
# split), Dice on positive images only, and the image-level AUC.
#
# **What to look for:**
# - whether the Kaggle curve climbs above the dashed line at all;
# - Dice on positives, which tells how good the masks are where there is something to find,
#   with no empty images in the average.

# %%
fig = figures.plot_extra_metrics({scenario: run}, [scenario])
