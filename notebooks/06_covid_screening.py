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
# **Why.** The paper's introduction sets out to test its model on chest X-rays of COVID-19
# patients. In those patients pneumothorax is a rare but serious complication, estimated at
# 1-2 % of cases. The paper's text reports no numbers for this test.
#
# **What this notebook does.** It runs the full predict path of `pneumo predict` over a
# folder laid out like the public `covid-chestxray-dataset` (`metadata.csv` + `images/`,
# DATA.md section 6). For each image: read any PNG / JPEG / DICOM of any size and mode,
# resize, run the model, post-process, and write a mask and an overlay. It then summarises
# the predictions by finding and view, and shows the most suspicious images.
#
# **Two things to keep in mind.**
# - **Base rates.** At 1-2 % prevalence, even a model that rarely errs on normal images
#   raises more false alarms than true ones. A positive here is a flag for a radiologist to
#   look at, not a diagnosis.
# - **Domain shift.** These images come from other hospitals, machines and patients than
#   SIIM-ACR, often sick patients on portable films. Nothing here measures accuracy on them.
#
# By default (`covid_dir = None`) it screens **held-out phantom images**, so that the
# notebook runs anywhere. They are generated with another seed than the training phantom
# and written as a mix of PNG and JPEG, grey, RGB and RGBA, in several sizes. Point `covid_dir` at
# the real collection to screen real patients.
#
# The model is the finished run with the best **validation** pooled Dice (never chosen on
# test), or the run named in `checkpoint_run`. When that run has a `postprocess.json` (the
# triplet tuned in notebook 08), it sets the decision rule; otherwise the rule is threshold
# 0.5. `pneumo reproduce --studies` runs notebook 08 after this one, so rerun this notebook
# afterwards to screen with the tuned rule.

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

# %% [markdown]
# The folder to screen and the run folder of the model that screens it.

# %%
folder = covid_dir or heldout_phantom(cfg)
run = screening.pick_run(cfg, checkpoint_run)
print("screening", folder, "with", run)

# %% [markdown]
# ## Predict every image
#
# Each row holds the image's metadata, then:
# - `status`: "ok", or why the file could not be read;
# - `probability`: the image-level probability, from the image-level head when the model
#   has one, else the largest pixel probability;
# - the predicted area and the `decision`.
#
# Masks, overlays and `screening.csv` go to `results/<profile>/screening/`.

# %%
df = screening.screen(folder, run, paths.results_dir(cfg.name) / "screening")
df.head()

# %% [markdown]
# ## By finding and view
#
# Per group: images (`n`, `n_ok`, `n_error`), how many were called positive
# (`n_positive`, `share_positive`), and the mean probability.
#
# **What to look for:**
# - **On the held-out phantom** the finding *is* the truth. `share_positive` in the
#   "Pneumothorax (phantom)" rows is the sensitivity, and in the "No finding (phantom)" rows
#   it is the false-positive rate.
# - **On the real collection** the findings are diagnoses (COVID-19 and others), and there
#   are no pneumothorax masks. The table then says how often the model raises a flag, not
#   whether it is right.
# - **Views.** AP and PA films differ in magnification and positioning, and a model can
#   behave differently on each.

# %%
summary = screening.summarise(df)
summary

# %% [markdown]
# ## The most suspicious images
#
# The `top_k` readable images with the highest probability, with the predicted mask in red.
#
# **What to look for:** where the red lies. It can sit along the pleura at the apex or the
# lateral chest wall, where the training masks are. Or it can sit on things that only look
# like a pleural line: skin folds, tubes and lines, the image border, text burnt into the
# film.

# %%
fig = screening.plot_most_suspicious(df, k=top_k)

# %% [markdown]
# Write `covid_screening.csv`, `covid_screening_summary.csv` / `.md` (with the model and
# the decision rule used) and `covid_screening_top.png` to `figures/<profile>/`.

# %%
screening.write_outputs(df, summary, fig, paths.figures_dir(cfg.name))
