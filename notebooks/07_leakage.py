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
# # 07 · Leakage study: the paper's split protocol against a clean one
#
# **Why.** The paper augments every positive image (a flip and a rotation) **before**
# splitting. A flipped or rotated copy of a test image therefore usually sits in the
# training set (notebook 02 counts it). The test split then no longer stands for unseen
# patients.
#
# **What this notebook does.** It scores the same scenarios (`random` and `resnet50`) under
# both protocols, on the same data:
# - `clean`: the main runs of notebook 04;
# - `paper`: study runs of the same template with `protocol=paper`, trained by
#   `pneumo reproduce --studies leakage`.
#
# Each run is scored on its own test split, which is what that protocol would report. The
# paper protocol's test split is then cut into the items whose source image has a copy in
# train/validation and the rest. Every score has a 95 % bootstrap interval. Under `paper`
# that bootstrap resamples source images with all their items.
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
# One row per scenario, protocol and part of the test split (`test_items`: "all", "with a
# copy in train/val", "without"). For each row: pooled Dice, the Kaggle score, Dice on
# positives and the AUC, with intervals; the number of test images and positives; and
# `empty_baseline`, the Kaggle score of predicting every mask empty on that row's images.
#
# **Why the `paper` rows usually score higher.** Two effects add up:
# 1. **Memory.** A leaked test positive is the mirror image or a slightly turned copy of a
#    training image, with the same mask. The model has already seen the answer.
# 2. **Composition.** The paper protocol's test split is about 46 % positive instead of
#    22 %. With fewer empty images there are fewer chances for false positives, which raises
#    pooled Dice even without any memory. The all-empty Kaggle baseline drops, so read each
#    row's Kaggle score against its own `empty_baseline`.
#
# To separate the two, compare `dice_positive` (mean Dice over positive images only, which
# does not depend on prevalence) between the two protocols' "all" rows.
#
# **A trap in the inner split.** Only positives are augmented, so only positive test items
# can have a copy, and most of them do. The "without" rows are then mostly negatives (see
# `n_positive`). Comparing "with a copy" against "without" therefore mixes the leak with the
# class mix. The fair contrast is protocol against protocol, on the "all" rows.

# %%
table = studies.leakage_study(cfg)
table

# %% [markdown]
# ## The figure
#
# Bars show pooled Dice and the Kaggle score per scenario, one bar per protocol and part,
# with 95 % whiskers. The dashed all-empty line is the first row's (the clean test split).
# The paper protocol's own baseline is lower, because its test split has more positives;
# it is in the table's `empty_baseline` column.
#
# **What to look for:** the `paper / all` bar against the `clean / all` bar of the same
# scenario. That difference is what the paper's protocol adds to a reported score.

# %%
fig = plots.study_bars(table, x="scenario", hue=["protocol", "test_items"], title="Leakage: paper vs clean protocol")

# %% [markdown]
# Write `leakage.csv`, `leakage.md` (with the note above the table) and `leakage.png` to
# `figures/<profile>/`.

# %%
studies.write_study(table, "leakage", paths.figures_dir(cfg.name), studies.LEAKAGE_NOTE, fig)
