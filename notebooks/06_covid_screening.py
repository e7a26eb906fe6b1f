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
# # 06 · Screening X-rays of COVID-19 patients for pneumothorax
#
# The paper ends by screening COVID-19 patients' chest X-rays for pneumothorax. This notebook
# runs the full predict path of `pneumo predict` (read any PNG / JPEG / DICOM of any size and
# mode, resize, model, post-process, write a mask and an overlay per image) over a folder laid
# out like the public `covid-chestxray-dataset` (`metadata.csv` + `images/`, DATA.md section 6),
# summarises the predictions by finding and view, and shows the most suspicious images.
#
# By default (`covid_dir = None`) it screens **held-out phantom images** (generated with another
# seed than the training phantom, written as a mix of PNG and JPEG, grey and RGB) so that the
# notebook runs anywhere. Point `covid_dir` at the real collection to screen real patients.
#
# The model: the finished main run with the best **validation** pooled Dice (never chosen on
# test), or the run named in `checkpoint_run`. Its `postprocess.json` (the tuned triplet of the
# image-level study), when present, sets the decision rule; otherwise threshold 0.5.

# %%
from pneumolib import paths
from pneumolib.commands import screening
from pneumolib.config import notebook_config
from pneumolib.data.covid import heldout_phantom

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed
covid_dir = None  # folder with metadata.csv and images/ (covid-chestxray-dataset), or None
checkpoint_run = ""  # run folder name under results/<profile>/; empty: the best on validation
top_k = 6  # overlays shown

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %%
folder = covid_dir or heldout_phantom(cfg)
run = screening.pick_run(cfg, checkpoint_run)
print("screening", folder, "with", run)

# %%
df = screening.screen(folder, run, paths.results_dir(cfg.name) / "screening")
df.head()

# %% [markdown]
# ## By finding and view

# %%
summary = screening.summarise(df)
summary

# %% [markdown]
# ## The most suspicious images

# %%
fig = screening.plot_most_suspicious(df, k=top_k)

# %%
screening.write_outputs(df, summary, fig, paths.figures_dir(cfg.name))
