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
# # 08 · Image-level decisions: triplet post-processing and a classification head
#
# **Why.** Most SIIM-ACR images are empty, and the Kaggle score gives 1 for an empty
# prediction on an empty image. Deciding **whether** an image has a pneumothorax therefore
# matters as much as drawing it. One stray blob on an empty image turns that image's score
# from 1 to 0.
#
# **What this notebook does.** It tries two ideas from the competition's winners on every
# finished main run (and on the study run `random_cls`):
# - **the 1st place's *triplet*.** An image is positive when more than `min_area` pixels
#   exceed a top threshold. Its mask is then every pixel above a lower, bottom threshold.
#   `min_area` is in pixels at the training resolution, and areas scale with the square of
#   the side: the winners' 2,000 px at 1024 would be about 500 px at 512 and about 8 at 64.
# - **the 4th place's image-level *classification head*** (scenario `random_cls`, trained by
#   `pneumo reproduce --studies image_level`). A mask is kept only when the head's
#   probability passes a gate.
#
# All parameters are tuned on the **validation** split only, to maximise the Kaggle score
# there. The test split is then scored once. Each run's tuned triplet is written to its
# `postprocess.json`, which `pneumo predict` and notebook 06 use.
#
# **Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The *Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty prediction, averaged over images; predicting every mask empty already scores the share of empty test images, the all-empty baseline that this notebook computes from its test split and shows beside every Kaggle score. The two cannot be compared.

# %%
from pneumolib import paths
from pneumolib.config import notebook_config
from pneumolib.evaluation import image_level
from pneumolib.models.scenarios import scenario_order
from pneumolib.reporting import studies

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %% [markdown]
# The runs to study: the six main scenarios and the study's runs. Unfinished ones are
# skipped with a warning.

# %%
runs = {sc: paths.results_dir(cfg.name) / sc for sc in scenario_order()}
runs.update(studies.study_runs(cfg, "image_level"))
sorted(runs)

# %% [markdown]
# ## The study table
#
# One row per run and method. The methods:
# - `all_empty`: the floor;
# - `threshold`: what training reports;
# - `triplet`;
# - for `random_cls` only, `gate` and `gate+triplet`.
#
# `params` holds the tuned values and `val_score` the tuned Kaggle score on validation. The
# metric columns are all on test. The table, a Markdown version and a bar chart
# (`image_level.csv` / `.md` / `.png`) go to `figures/<profile>/`.
#
# **What to look for:**
# - **`triplet` against `threshold`** for the same run. The triplet trades a few pixels for
#   cleaner decisions. It should raise `specificity` (fewer empty images with a stray blob)
#   and the Kaggle score, possibly at some cost in `sensitivity` and pooled Dice.
# - **Every row against `all_empty`.** A method only helps the Kaggle score by the amount
#   it clears this floor.
# - **`val_score` against the test `dice_per_image`.** The values were chosen to be best on
#   validation, so validation is optimistic. A large gap means the grid overfitted a small
#   validation split.
# - **The gate** (`random_cls`). Does a dedicated "is there a pneumothorax?" head decide
#   emptiness better than the mask's own area?

# %%
table = image_level.image_level_study(runs)
studies.write_image_level(table, paths.figures_dir(cfg.name))
table
