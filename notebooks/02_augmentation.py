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
# # 02 · Augmentation and splits
#
# To counter the class imbalance, the paper (section 3.2) augmented every **positive** image
# twice, image and mask together: a horizontal flip, and a rotation by a random 3-7 degrees in
# either direction with black fill. 2,669 positives became 8,007 and the data 17,385 items,
# which it then split into train and test (its Table 2: 15,433 / 1,952).
#
# Below: the paper's Figures 2 and 3 (an image and its mask: original, flipped, rotated), made
# with the same functions (`pneumolib.prep.augment.hflip`, `rotate`, `paper_angle`) that build the
# training items; then the split tables of both protocols:
#
# - `paper`: augment first, then split, as the paper did. A flipped or rotated copy of a test
#   image then usually sits in the training set: the test set **leaks**. We count it.
# - `clean` (our default): split the source images first, augment only the training positives.
#
# With `data = None` everything runs on the built-in **phantom** (synthetic chest radiographs in the `siim-png` layout, read by the same code as the real data); its numbers show that the pipeline works, not what the paper measured on SIIM-ACR.

# %%
from pneumolib.config import notebook_config
from pneumolib.reporting import eda, plots

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed
example_index = None  # source index of the image to show, or None for the largest mask

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %%
source = eda.open_data(cfg)
examples = eda.augmentation_examples(source, index=example_index, seed=cfg.seed)

# %% [markdown]
# ## Figure 2: an X-ray and its augmentations

# %%
fig = plots.augmentation_figure(examples, "image")

# %% [markdown]
# ## Figure 3: its mask and the same augmentations

# %%
fig = plots.augmentation_figure(examples, "mask")

# %% [markdown]
# ## The splits (the paper's Table 2), both protocols
#
# Items per split and class, drawn with this run's seed and fractions (`test_frac` defaults to
# the paper's 1,952 / 17,385). The paper's own table follows.

# %%
splits = eda.split_tables(source, cfg)
splits["tables"]

# %%
eda.PAPER_TABLE2

# %% [markdown]
# ## Leakage
#
# `test_sources`: source images with an item in test; `leaked_sources`: those that also have an
# item (the original, its flip or its rotation) in train or validation; `leaked_test_frac`:
# the share of test items whose source image was seen in training. Under `paper` most test
# positives leak, which flatters every test number; `clean` has none.

# %%
splits["leakage"]

# %%
print(f"this run trains with protocol {cfg.protocol!r}")
splits["tables"].loc[cfg.protocol]
