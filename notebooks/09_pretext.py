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
# # 09 · A pretext that cannot cheat
#
# **Why.** The paper's X-ray autoencoder is a U-Net with skip connections. It can pass its
# input through the top skip and learn little in its encoder; notebook 03 measures this as
# the *copy-through ratio*. If the encoder learned little, transferring it cannot help much,
# and that could be why the paper's autoencoder scenarios end near random.
#
# **What this notebook does.** It compares, after fine-tuning, two pretexts that cannot take
# that shortcut, each transferred like the paper's autoencoder:
#
# - **Models Genesis** restoration (Zhou et al.): the input X-ray is distorted (non-linear
#   intensity, local pixel shuffling, in-painting or out-painting) and the target is the
#   clean X-ray. Copying the input gives a wrong answer by construction (`genesis_full`,
#   `genesis_encoder`).
# - an X-ray autoencoder **without skip connections**, whose reconstruction must pass
#   through the bottleneck (`noskip_encoder`).
#
# `pneumo reproduce --studies pretext` trains both autoencoders (notebook 03 with
# `kinds=genesis,xray_noskip`) and the three scenarios (notebook 04). Only finished runs
# appear.
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
# One row per scenario: `random` and the paper's `ae_encoder` / `ae_full` for reference,
# then the pretext scenarios. `pretrained_from` names the autoencoder a scenario starts
# from, and `ae_copy_through_ratio` gives that autoencoder's test MSE with the top skip
# zeroed divided by its normal test MSE. Then come the segmentation scores on test, with
# 95 % intervals.
#
# **What to look for:**
# - **The ratio column.** Far above 1 means the autoencoder copied; near 1 means its deep
#   path did the work. `ae_xray_noskip` is 1 by construction, since it has no skip to copy
#   through. That says nothing about how good its features are.
# - **For Genesis**, the real test of "did it learn?" is in its `metrics.json`
#   `copy_through`: its `mse` should be well below `mse_input_as_output`, the error of
#   handing back the distorted input unchanged.
# - **Segmentation against `random`.** Does a lower ratio come with a better score after
#   fine-tuning? Separate intervals make a difference believable. Overlapping ones leave it
#   open, since there is no paired test here (compare notebook 05's pairwise table).
# - **Expect small effects at full labels.** In the field, pixel-level restoration pretexts
#   give modest gains, mostly when labels are scarce (notebook 10).

# %%
table = studies.pretext_study(cfg)
table

# %% [markdown]
# ## The figure
#
# Pooled Dice and the Kaggle score per scenario (bars: test split; whiskers: 95 %
# intervals; dashed: the all-empty Kaggle baseline of the test split, which is the same for
# every row here).
#
# **What to look for:** whether any pretext bar clears the `random` bar by more than the
# whiskers allow.

# %%
fig = plots.study_bars(table, x="scenario", title="Pretext tasks: segmentation after transfer")

# %% [markdown]
# Write `pretext.csv`, `pretext.md` and `pretext.png` to `figures/<profile>/`.

# %%
studies.write_study(table, "pretext", paths.figures_dir(cfg.name), studies.PRETEXT_NOTE, fig)
