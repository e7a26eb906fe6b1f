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
# Pretraining matters most when labels are scarce, so this field compares initialisations at
# several label budgets. Every scenario is fine-tuned with 1 %, 10 % and 100 % of the
# training labels (the same class-stratified subset of source images for every scenario; the
# subset is cycled so that every run takes the same number of optimiser steps).
#
# **Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The *Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty prediction, averaged over images; predicting every mask empty already scores about 0.78 at 22 % prevalence. The two cannot be compared.

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

# %%
table = studies.label_efficiency_study(cfg)
table

# %%
fig = plots.label_efficiency(table)

# %%
studies.write_study(table, "label_efficiency", paths.figures_dir(cfg.name), studies.LABEL_EFFICIENCY_NOTE, fig)
