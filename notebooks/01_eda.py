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
# The paper (section 3.1) uses the PNG re-packaging of the SIIM-ACR Pneumothorax data:
# 12,047 grey-scale chest X-rays of 1024 x 1024 pixels, 2,669 of them with a pneumothorax mask
# (22 %), the rest with an all-black mask (its Table 1). Its EDA led to three preparation
# steps (section 3.2): augmenting the minority class, resizing to 512 x 512, and normalising
# with the training set's global mean and standard deviation (0.4828 / 0.2488).
#
# This notebook shows the same facts for the data this run uses: counts and prevalence,
# how large the masks are and where they lie, the pixel statistics, and a few examples.
#
# With `data = None` everything runs on the built-in **phantom** (synthetic chest radiographs in the `siim-png` layout, read by the same code as the real data); its numbers show that the pipeline works, not what the paper measured on SIIM-ACR.

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
# Per split of the source (the `stage_1_train` / `stage_1_test` CSVs of the PNG layout) and in
# total. The paper's row is shown for comparison.

# %%
source = eda.open_data(cfg)
print(source)
eda.dataset_summary(source)

# %%
eda.table1(source, with_paper=True)

# %% [markdown]
# ## Mask sizes
#
# Areas at the training resolution (`image_size`), read from the image cache that training
# uses (built here on first use: every image and mask resized once). Pneumothoraces range from
# a thin rim along the pleura to a collapsed lung, so the areas span orders of magnitude; small
# ones are what makes the pooled and the per-image Dice differ.

# %%
dm = eda.prepare(cfg, source)
areas = eda.mask_areas(dm)
areas[["area_px", "area_frac"]].describe()

# %%
fig = plots.area_histogram(areas)

# %% [markdown]
# ## Where the masks lie
#
# Per pixel, the share of positive images whose mask covers it (this run's data, at the training
# resolution). On the real data pneumothorax collects at the apices, more often on the
# patient's right, and along the lateral chest wall.

# %%
fig = plots.heatmap(eda.mask_heatmap(dm))

# %% [markdown]
# ## The real SIIM-ACR annotations beside the phantom
#
# The real annotation table (all 12,954 rows of `train-rle.csv`, 2,669 positive images)
# ships inside the `torchxrayvision` wheel, so these numbers are real on every machine, even
# without the images: prevalence, annotations per image (an image's mask is the union of its
# rows), how large the masks are (as a share of the 1024 x 1024 image) and where they lie.
# Two numbers say how close the phantom comes: the two-sample Kolmogorov-Smirnov statistic of
# the positive mask areas (0 = the same distribution) and the Pearson correlation of the two
# mean location heat maps (64 x 64, positives only; 1 = the same places). What to look for:
# both maps bright at the apices, the right lung (the image's left half) a little more often,
# thin bands down the lateral chest wall.

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
# The paper normalised with the training set's global mean and standard deviation. Training
# here uses the statistics of the training *items* (originals plus the flipped and rotated
# copies), computed once by the data module and saved next to the split.

# %%
eda.pixel_stats_table(dm)

# %% [markdown]
# ## Examples (mask in red)

# %%
fig = plots.overlay_grid(*eda.sample_images(dm, n=n_examples, seed=cfg.seed))
