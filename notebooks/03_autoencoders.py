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
# **What this notebook does.** It trains the paper's self-supervised step (section 3.3.3;
# settings in its Table 3). The same U-Net is trained with MSE loss, once to reconstruct
# **X-rays** and once to reconstruct **masks**. Their weights then seed the segmentation
# model in four of the six scenarios (notebook 04).
#
# **Why (the paper).** The idea is "to learn beforehand the representation of the visual
# features in the research dataset": learning from the images alone, without labels, and
# then transferring (self-taught learning, Raina et al. 2007).
#
# **The trap.** A U-Net autoencoder has skip connections. It can copy its input through the
# top (full-resolution) skip and learn almost nothing in its deep layers, and then its
# encoder holds little to transfer. We measure this: the test reconstruction error with the
# top skip zeroed, next to the normal one.
#
# With `data = None` everything runs on the built-in **phantom** (synthetic chest radiographs in the `siim-png` layout, read by the same code as the real data); its numbers show that the pipeline works, not what the paper measured on SIIM-ACR.

# %%
from pneumolib import paths, runio
from pneumolib.config import notebook_config
from pneumolib.reporting import eda, figures, plots, tables
from pneumolib.training import runs
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
# - `xray`: input the normalised X-ray, target the same X-ray.
# - `mask`: input the mask, target the same mask.
#
# Both train on the training split of notebook 02. They use early stopping on the
# validation loss and run for at most `ae_max_epochs` epochs. Each run writes its folder
# `results/<profile>/ae_<kind>/`, and the cell shows the best checkpoint's test numbers.
# The pretext study (notebook 09) runs this notebook again with two more kinds:
# - `genesis`: input an X-ray distorted by the Models Genesis transforms, target the clean
#   X-ray;
# - `xray_noskip`: the X-ray autoencoder with every skip connection zeroed.
#
# On one device this cell trains right here, with a live progress bar (a line per epoch
# when papermill runs it). Some settings ask for several processes, e.g. `devices=2` with
# `strategy="ddp"`, as the `paper` profile does on a dual-GPU box; Lightning cannot start
# those from inside a notebook. The cell then runs the same training as `pneumo pretrain` in
# child processes started and watched by torchrun (or by `launcher`, e.g. `srun`), shows
# their log here as it comes, and reads the results back from the run folder
# (`pneumolib.training.launch`). If one of them dies, the others are stopped and the cell
# fails naming the rank; interrupting the cell ends them all.
#
# **Interrupted?** Run the cell again: a training interrupted in any way (Ctrl-C, a kernel
# restart, a power cut) continues from its last finished epoch, and its numbers end up the
# same as an uninterrupted run's; the cell says from which epoch it resumed. A run that
# already finished with the same settings, data and code is read back instead of trained
# again; one from other settings starts afresh, and the cell says why.

# %%
kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
summaries = {k: runs.pretrain(cfg, k) for k in kind_list}
{k: s["test"] for k, s in summaries.items()}

# %% [markdown]
# ## Loss per epoch (read back from the run folders)
#
# Train, validation and test MSE per epoch, one panel per autoencoder, from each run's
# `epochs.csv`.
#
# **What to look for:**
# - the curves falling and then flattening, and where early stopping ended the run;
# - the train loss is averaged over the epoch while the weights change, so in the first
#   epochs it can sit above validation;
# - the mask autoencoder's loss is tiny in absolute terms, because most pixels of most masks
#   are black.
#
# A very low X-ray loss after the first epoch is a first hint of copying: reconstructing an
# image through an identity path is easy.

# %%
runs = runio.read_runs(paths.results_dir(cfg.name), [AE_KINDS[k] for k in kind_list])
fig = figures.plot_loss_curves(runs, names=tuple(runs))

# %% [markdown]
# ## The copy-through measurement
#
# Measured on the test split in the final evaluation pass:
# - `mse`: the test reconstruction error;
# - `mse_top_skip_zeroed`: the same network with its full-resolution skip replaced by zeros;
# - `ratio_zeroed_over_normal`: the second divided by the first;
# - `mse_identity_baseline`: the error of predicting the test split's mean value everywhere,
#   which is what an autoencoder that learned nothing would score.
#
# **How to read the ratio:**
# - **near 1**: the top skip barely matters. The deeper path carries the reconstruction, so
#   the encoder had to learn something about the images.
# - **far above 1**: the reconstruction depends on the top skip. The network mostly copies
#   its input at full resolution, and its encoder learned little worth transferring.
#   Notebook 09 tries pretexts that cannot take this shortcut.
#
# A ratio near 1 is a good sign, not a proof. Also check that `mse` is well below
# `mse_identity_baseline`, and that zeroing the skip does not push the error up to that
# baseline. The three coarser skips stay open and can still pass detail. For `xray_noskip`
# every skip is already zeroed, so its ratio is 1 by construction.

# %%
tables.copy_through_table(runs, names=tuple(runs))

# %% [markdown]
# ## Reconstructions: input, output, output with the top skip zeroed
#
# Test items, positives first so that the mask rows are not all black. Every column uses the
# grey scale of the input column, so errors show up as differences in brightness.
#
# **What to look for:**
# - the reconstruction should look like the input;
# - the "top skip zeroed" column is what the deep path produces on its own. A blurred but
#   recognisable chest means the encoder learned the image. A flat grey or noise means the
#   network was mostly copying.
#
# For `genesis` the columns are the distorted input, the clean target, the reconstruction
# and the zeroed version.

# %%
dm = eda.prepare(cfg)
for k in kind_list:
    fig = plots.reconstruction_grid(eda.reconstructions(cfg, k, n=n_examples, dm=dm), f"{k} autoencoder")
