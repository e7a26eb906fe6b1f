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
# The paper's X-ray autoencoder is a U-Net with skip connections: it can pass its input
# through the top skip and learn little in its encoder (notebook 03 measures this: the
# *copy-through ratio*). Two pretexts that cannot take that shortcut, each transferred like the
# paper's autoencoder:
#
# - **Models Genesis** restoration (Zhou et al.): the input X-ray is distorted (non-linear
#   intensity, local pixel shuffling, in-painting or out-painting) and the target is the clean
#   X-ray, so copying the input is wrong by construction (`genesis_full`, `genesis_encoder`);
# - an X-ray autoencoder **without skip connections**, whose reconstruction must pass the
#   bottleneck (`noskip_encoder`).
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
table = studies.pretext_study(cfg)
table

# %%
fig = plots.study_bars(table, x="scenario", title="Pretext tasks: segmentation after transfer")

# %%
studies.write_study(table, "pretext", paths.figures_dir(cfg.name), studies.PRETEXT_NOTE, fig)
