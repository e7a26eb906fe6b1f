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
# **One template, run once per scenario** by `pneumo reproduce` (papermill sets `scenario`).
# The paper's six initialisations of the segmentation U-Net (its Table 4, registry
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
# Training follows the paper: BCE + Dice, Adam, early stopping on the validation loss
# (min delta 0.001, patience 5); every epoch is also evaluated on the test split, as the paper
# plots. The metrics of the best checkpoint (lowest validation loss) go to `metrics.json`.
#
# **Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The *Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty prediction, averaged over images; predicting every mask empty already scores about 0.78 at 22 % prevalence. The two cannot be compared.

# %%
from pneumolib import paths, runio
from pneumolib.config import notebook_config
from pneumolib.models import scenarios
from pneumolib.reporting import figures, tables
from pneumolib.training import launch

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

# %%
sc = scenarios.get_scenario(scenario)
run_dir = paths.results_dir(cfg.name) / (run_name or scenario)
sc

# %% [markdown]
# ## Training
#
# On one device this cell trains right here, with Lightning's progress bar. When the
# settings ask for several processes (`devices=2`, `strategy="ddp"`, as the `paper` profile
# does on a dual-GPU box), Lightning cannot start them from inside a notebook, so the cell
# runs the same training as `pneumo train` in a child process, shows its log here as it comes
# and reads the results back from the run folder (`pneumolib.training.launch`).

# %%
summary = launch.train_scenario(cfg, scenario, out=run_dir)

# %% [markdown]
# ## Per epoch: the four panels of Figures 5-7 (read back from `epochs.csv`)

# %%
run = runio.read_run(run_dir)
fig = figures.figure_group({scenario: run}, [scenario], f"{sc.label} ({scenario})")

# %% [markdown]
# ## The best checkpoint on validation and test
#
# `dice_pooled` / `iou_pooled` are the numbers to hold against the paper's column;
# `dice_per_image` is the Kaggle score, next to what predicting all-empty scores.

# %%
tables.run_summary(run)

# %%
fig = figures.plot_extra_metrics({scenario: run}, [scenario])
