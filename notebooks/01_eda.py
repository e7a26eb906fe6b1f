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
# # 01 · Exploratory data analysis
#
# **What this notebook does.** It looks at the data before any model does: how many images
# and how many positives, how large the masks are and where they lie, the pixel statistics
# used for normalisation, and a few examples.
#
# **Why.** The paper (sections 3.1-3.2) uses the PNG re-packaging of SIIM-ACR: 12,047
# grey-scale chest X-rays of 1024 x 1024 pixels, 2,669 of them with a pneumothorax mask
# (22 %), the rest with an all-black mask (its Table 1). Its EDA led to three preparation
# steps: augmenting the minority class (notebook 02), resizing to 512 x 512, and normalising
# with the training set's global mean and standard deviation (0.4828 / 0.2488). Each section
# below shows the fact behind one of them.
#
# **How to run it.** Top to bottom. The cell tagged `parameters` holds the settings;
# `pneumo reproduce` (papermill) injects its own values right after it, and the next cell
# turns them into a frozen `Config` that fails loudly on a misspelt name.
#
# With `data = None` everything runs on the built-in **phantom** (synthetic chest radiographs in the `siim-png` layout, read by the same code as the real data); its numbers show that the pipeline works, not what the paper measured on SIIM-ACR. The section on the real annotations gives real numbers on every machine.

# %%
from pneumolib import paths
from pneumolib.config import notebook_config
from pneumolib.reporting import eda, plots, realism

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed
n_examples = 8  # images in the sample grid

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %% [markdown]
# ## Counts and prevalence (the paper's Table 1)
#
# The first table counts images per split of the source: the `stage_1_train` /
# `stage_1_test` CSVs of the PNG layout. A DICOM folder has no such split and shows the
# total only. The second table lays the data out like the paper's Table 1, with the paper's
# row under it.
#
# **What to look for:** `prevalence`. On SIIM-ACR it is 2,669 of 12,047 (the paper's row),
# so a model that calls every image normal is right for the other 9,378. That imbalance is
# why the paper augments the positives (notebook 02), and why the per-image Kaggle score has
# a high floor (notebook 04).

# %%
source = eda.open_data(cfg)
print(source)
eda.dataset_summary(source)

# %%
eda.table1(source, with_paper=True)

# %% [markdown]
# ## Mask sizes
#
# These are the areas of the positive masks at the training resolution (`image_size`). They
# are read from the image cache that training uses. The cache is built here on first use
# (every image and mask resized once), and notebooks 02-04 reuse it.
#
# **Why it matters.** A pneumothorax can be a thin rim along the pleura or a collapsed lung.
# On SIIM-ACR the median mask covers a small fraction of the image, the smallest only a
# handful of pixels, and some positives are under 2,000 px of 1024² (the real annotations'
# quantiles are in the table of the section on them below). Areas scale with the
# square of the side, so a 2,000 px mask keeps about 500 px at the paper's 512 and about 8 at
# the demo's 64. This is the paper's reason for not going below 512 (section 3.2): smaller
# images lose the region of interest.
#
# **What to look for** in the histogram (log x axis):
# - how widely the areas spread (orders of magnitude);
# - the median (dashed line);
# - the left tail of tiny masks.
#
# Small masks barely move the *pooled* Dice, which sums pixels over the whole test set. In
# the *per-image* (Kaggle) score they count as much as large ones.

# %%
dm = eda.prepare(cfg, source)
areas = eda.mask_areas(dm)
areas[["area_px", "area_frac"]].describe()

# %%
fig = plots.area_histogram(areas)

# %% [markdown]
# ## Where the masks lie
#
# For each pixel: the share of positive images whose mask covers it, at the training
# resolution. The map is drawn as a PA film is viewed, with the patient's right on the
# image's left.
#
# **What to look for:** on the real data, pneumothorax collects at the apices (the top of
# each lung) and along the lateral chest wall, a little more often on the patient's right.
# Masks hug the pleura, so the map is brightest at the outer edges of the lung fields and
# darkest over the mediastinum.

# %%
fig = plots.heatmap(eda.mask_heatmap(dm))

# %% [markdown]
# ## The real SIIM-ACR annotations beside the phantom
#
# The real annotation table (every row of `train-rle.csv`) ships inside the
# `torchxrayvision` wheel. So these numbers are real on every machine, even
# without the images. The table puts real and phantom side by side:
# - prevalence;
# - annotations per image (some real images have several; an image's mask is the union of
#   its rows, while the phantom has exactly one per positive);
# - mask area as a share of the image, at several quantiles;
# - the share of positives under 2,000 px of 1024².
#
# For a run on real data, the phantom column describes a reference phantom (1,500 images at
# 256 px) and is there for comparison only.
#
# Two numbers summarise how close the phantom comes (positives only):
# - **area KS statistic**: the two-sample Kolmogorov-Smirnov statistic of the mask areas,
#   i.e. the largest gap between the two cumulative distributions (0 = the same
#   distribution, 1 = no overlap);
# - **heat-map correlation**: the Pearson correlation of the two mean location maps
#   (64 x 64; 1 = the same places).
#
# **What to look for** in the pair of maps (one colour scale for both):
# - both bright at the apices;
# - the image's left half (the patient's right) a little more often;
# - thin bands down the lateral chest walls.
#
# The figure and `realism.csv` are also written to `figures/<profile>/`.

# %%
real = realism.compare_run(cfg)
real["table"]

# %%
fig = plots.heatmap_pair(real["heat_real"], real["heat_phantom"], real["compare"]["heat_corr"])
realism.write_comparison(real, paths.figures_dir(cfg.name), fig)
print(f"area KS {real['compare']['ks']:.3f}, heat-map correlation {real['compare']['heat_corr']:.2f}")

# %% [markdown]
# ## Pixel statistics (normalisation)
#
# The paper normalised every image with the training set's global mean and standard
# deviation, with pixel values scaled to [0, 1]. Inputs on one consistent scale help the
# optimiser converge (its section 3.2). Taking the numbers from the training part only keeps
# the test images out of every choice made in training.
#
# The rows of the table:
# - all source images;
# - the training source images;
# - the training *items* that the data module actually normalises with: originals plus the
#   flipped and rotated copies, computed once and saved next to the split;
# - the paper's values.
#
# **What to look for:** the training-items row differs a little from the source rows. Each
# positive counts three times, and rotated copies have black corners. The paper's row comes
# from real SIIM-ACR, so the phantom does not need to match it.

# %%
eda.pixel_stats_table(dm)

# %% [markdown]
# ## Examples (mask in red)
#
# A few images at the training resolution, about three in four of them positive. Each title
# gives the id, the label and the mask area in pixels.
#
# **What to look for:** how thin and faint most masks are next to the whole chest, and how
# little a small one has left at the training resolution. A few pixels of disagreement there
# swing that image's Dice a lot.

# %%
fig = plots.overlay_grid(*eda.sample_images(dm, n=n_examples, seed=cfg.seed))
