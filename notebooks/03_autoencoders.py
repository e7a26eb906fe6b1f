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
# # 03 · The autoencoders
#
# The paper's self-supervised step (section 3.4): the same U-Net, trained with MSE and the same
# settings, once to reconstruct **X-rays** and once to reconstruct **masks**. Their weights
# then seed the segmentation model in four of the six scenarios (notebook 04).
#
# A trap in this design: a U-Net autoencoder with skip connections can copy its input through
# the top (full-resolution) skip and learn almost nothing in its deep layers, so its encoder
# holds little to transfer. We measure it: the test reconstruction error with the top skip
# zeroed, next to the normal one. A large ratio means the network mostly copies.
#
# With `data = None` everything runs on the built-in **phantom** (synthetic chest radiographs in the `siim-png` layout, read by the same code as the real data); its numbers show that the pipeline works, not what the paper measured on SIIM-ACR.

# %%
from pneumolib import paths, runio
from pneumolib.config import notebook_config
from pneumolib.reporting import eda, figures, plots, tables
from pneumolib.training import launch
from pneumolib.training.runs import AE_KINDS

# %% tags=["parameters"]
profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed
kinds = "xray,mask"  # autoencoders to train: xray, mask (the paper's); genesis, xray_noskip (pretext study)
n_examples = 4  # test items in the reconstruction grids

# %%
cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)
cfg

# %% [markdown]
# ## Training
#
# `xray`: input the normalised X-ray, target the same X-ray. `mask`: input the mask, target the
# same mask. (The pretext study runs this notebook again with `genesis`: input an X-ray
# distorted by the Models Genesis transforms, target the clean X-ray; and `xray_noskip`: the
# X-ray autoencoder with every skip connection zeroed.)
#
# On one device this cell trains right here, with Lightning's progress bar. When the
# settings ask for several processes (`devices=2`, `strategy="ddp"`, as the `paper` profile
# does on a dual-GPU box), Lightning cannot start them from inside a notebook, so the cell
# runs the same training as `pneumo pretrain` in a child process, shows its log here as it comes
# and reads the results back from the run folder (`pneumolib.training.launch`).

# %%
kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
summaries = {k: launch.pretrain(cfg, k) for k in kind_list}
{k: s["test"] for k, s in summaries.items()}

# %% [markdown]
# ## Loss per epoch (read back from the run folders)

# %%
runs = runio.read_runs(paths.results_dir(cfg.name), [AE_KINDS[k] for k in kind_list])
fig = figures.plot_loss_curves(runs, names=tuple(runs))

# %% [markdown]
# ## The copy-through measurement
#
# `mse`: test reconstruction error; `mse_top_skip_zeroed`: the same with the top skip
# connection replaced by zeros; `mse_identity_baseline`: the error of predicting the mean.

# %%
tables.copy_through_table(runs, names=tuple(runs))

# %% [markdown]
# ## Reconstructions: input, output, output with the top skip zeroed

# %%
dm = eda.prepare(cfg)
for k in kind_list:
    fig = plots.reconstruction_grid(eda.reconstructions(cfg, k, n=n_examples, dm=dm), f"{k} autoencoder")
