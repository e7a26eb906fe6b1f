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
# **What this notebook does.** It shows the paper's offline augmentation (its Figures 2 and
# 3), made with the same functions that build the training items
# (`pneumolib.prep.augment.hflip`, `rotate`, `paper_angle`). Then it splits the data under
# two protocols and counts how much of each test split leaks into training.
#
# **Why.** To counter the class imbalance, the paper (section 3.2) augmented every
# **positive** image twice, image and mask together: a horizontal flip, and a rotation by a
# random 3-7 degrees in either direction with black fill. 2,669 positives became 8,007, and
# the data became 17,385 items, which it then split into train and test (its Table 2:
# 15,433 / 1,952). The order of those two steps matters:
#
# - `paper`: augment first, then split, as the paper did. A flipped or rotated copy of a test
#   image then usually sits in the training set, so the test set **leaks**. We count it.
# - `clean` (the default, used by `smoke` and `demo`): split the source images first, then
#   augment only the training positives. Validation and test hold originals only.
#
# The `paper` profile trains with the `paper` protocol to reproduce the paper. Notebook 07
# trains both protocols and compares them.
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
#
# The original, its horizontal flip, and one rotation. The angle is in the title and is
# drawn with this run's seed. `example_index = None` picks a positive image with a large mask
# so that the mask is easy to see.
#
# **What to look for:**
# - The flip mirrors the anatomy: the heart moves to the other side. A flipped image is not
#   a realistic X-ray, but the paper's reason for the flip is that it "produces completely
#   different images from a computer point of view".
# - The rotation is small and leaves black corners. The paper fills them with black because
#   X-ray borders tend to be black.

# %%
fig = plots.augmentation_figure(examples, "image")

# %% [markdown]
# ## Figure 3: its mask and the same augmentations
#
# The mask goes through the same flip and rotation. Masks are rotated with nearest-neighbour
# sampling, so they stay 0/1.
#
# **What to look for:** the mask follows the image exactly. That pairing is what makes each
# copy a valid training item. It is also why a copy tells the model the answer for its
# original.

# %%
fig = plots.augmentation_figure(examples, "mask")

# %% [markdown]
# ## The splits (the paper's Table 2), both protocols
#
# Items per split and class under both protocols, drawn with this run's seed and fractions
# (`test_frac`, `val_frac`). The `Config` default for `test_frac` is the paper's share,
# 1,952 / 17,385 = 11.2 %. The `demo` profile holds out 60 % of the images to narrow the
# test intervals. The paper's own table follows.
#
# **What to look for:** the share of positives in each split.
# - Under `paper`, every split is about 46 % positive (8,007 of 17,385), far from the 22 %
#   of the source data.
# - Under `clean`, validation and test keep the source's prevalence, and only the training
#   split is enriched.
#
# Prevalence moves every number later on. For example, the Kaggle score of predicting every
# mask empty equals the share of negative test images: 9,378 / 12,047 of the source data
# (the paper's Table 1), but 1,082 / 1,952 on the paper's test split (its Table 2).

# %%
splits = eda.split_tables(source, cfg)
splits["tables"]

# %%
eda.PAPER_TABLE2

# %% [markdown]
# ## Leakage
#
# The columns:
# - `test_sources`: source images with an item in test;
# - `leaked_sources`: those that also have an item (the original, its flip or its rotation)
#   in train or validation;
# - `leaked_test_items`: test items whose source image is seen in training;
# - `leaked_train_items`: the copies on the training side;
# - `leaked_test_frac`: the share of test items that leak.
#
# **What to look for:** `clean` is all zeros. Under `paper` only positives have copies, so
# only positive test items can leak. A positive test item escapes only if both of its
# siblings also land in test. With the paper's 11 % test share that happens to roughly 1 %
# of them, so nearly every test positive leaks. With the demo's 60 %, roughly a third
# escape.
#
# A leaked positive is the mirror image or a slightly turned copy of a training image, with
# the same mask. Its test score measures how well the model remembers a training image
# more than how well it generalises. That flatters every test number (notebook 07).

# %%
splits["leakage"]

# %% [markdown]
# The protocol this run trains with. Training draws its split the same way (same data,
# seed and fractions), saves it once next to the image cache, and notebooks 03 and 04
# reuse that file.

# %%
print(f"this run trains with protocol {cfg.protocol!r}")
splits["tables"].loc[cfg.protocol]
