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
# # 10 · Label efficiency
#
# **Why.** Pretraining matters most when labels are scarce. Drawing masks costs a
# radiologist's time, while unlabelled X-rays are cheap. So this field compares
# initialisations at several label budgets (1 %, 10 %, 100 %), not at the full set alone.
#
# **What this notebook does.** It collects every scenario fine-tuned with a share of the
# training labels. The 1 % and 10 % runs are study runs (`pneumo reproduce --studies
# label_efficiency`, shares set by `--label-fractions`), and 100 % is the main run.
# - The subset is a fixed, class-stratified set of training *source images* with at least
#   one of each class, and their flipped / rotated copies come with them. It is the same for
#   every scenario.
# - The subset is cycled, so every run takes the same number of optimiser steps; the
#   comparison is at equal training time.
# - Validation, test and the normalisation statistics are unchanged.
#
# **Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The *Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty prediction, averaged over images; predicting every mask empty already scores the share of empty test images, the all-empty baseline that this notebook computes from its test split and shows beside every Kaggle score. The two cannot be compared.

# %%
from pneumolib import paths
from pneumolib.config import notebook_config
from pneumolib.reporting import plots, studies

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %% [markdown]
# ## The table
#
# One row per scenario and `label_frac`: the test scores with 95 % intervals, the number of
# test images and positives, and the all-empty baseline. The test split is the same in every
# row.
#
# **What to look for:**
# - **How much each initialisation loses** as the labels shrink.
# - **Whether the pretrained scenarios pull away from `random` at 1 %**, where pretraining
#   should matter most.
# - **How few images "1 %" is.** On a small training set it can be a handful (at least one
#   positive and one negative source), so read that point as a stress test.

# %%
table = studies.label_efficiency_study(cfg)
table

# %% [markdown]
# ## The figure
#
# Score against the share of labels (log x axis), one line per scenario, with shaded 95 %
# intervals. There are two panels, pooled Dice and the Kaggle score, and the dashed line in
# the Kaggle panel is the all-empty baseline.
#
# **What to look for:**
# - the vertical gap between lines at each budget, against the shaded bands;
# - lines that cross, where a scenario is better with few labels but not with many.
#
# With one seed the intervals cover the choice of test images only: at 1 %, which few images
# happen to be in the fixed subset and the training seed also move the result, and a single
# seed does not show that (`training_variance` says so). The 100 % rows gather every seed of
# the main runs; their intervals then resample seeds and test images.

# %%
fig = plots.label_efficiency(table)

# %% [markdown]
# Write `label_efficiency.csv`, `label_efficiency.md` and `label_efficiency.png` to
# `figures/<profile>/`.

# %%
studies.write_study(table, "label_efficiency", paths.figures_dir(cfg.name), studies.LABEL_EFFICIENCY_NOTE, fig)
