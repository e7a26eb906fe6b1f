#!/usr/bin/env python
"""Write the notebook templates in ``notebooks/`` (stored without outputs).

The notebooks are generated, not hand-edited, so that they share one shape: an imports
cell, ONE ``parameters`` cell of flat literals (papermill injects its values after it),
then a cell that turns the parameters into a frozen Config with
:func:`pneumolib.reproduce.notebook_config` (which fails loudly on an unknown name or a bad
value). Everything else calls into ``pneumolib``; no notebook defines a function or class.

    .venv/bin/python scripts/make_notebooks.py          # rewrite notebooks/*.ipynb
    .venv/bin/python scripts/make_notebooks.py --check  # exit 1 if a stored notebook differs

``tests/test_notebooks_static.py`` checks the stored notebooks against this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"

PARAMS = '''profile = "demo"  # smoke | demo | paper (pneumolib/config.py)
data = None  # dataset folder (siim-png or siim-dicom layout), or None for the built-in phantom
overrides_json = "{}"  # other Config fields as a JSON object, e.g. '{"max_epochs": 3}' (pneumo reproduce --set)
seed = None  # None keeps the profile's seed'''

CONFIG = "cfg = notebook_config(profile, data=data, overrides_json=overrides_json, seed=seed)\ncfg"

WHICH_DICE = (
    "**Which Dice.** *Pooled* Dice / IoU sum intersections and areas over the whole test split "
    "and then divide; that is what the paper's Figures 5-7 and Table 4 most likely show, and "
    "what our `dice_pooled` / `iou_pooled` and the `test_dice` / `test_iou` curves are. The "
    "*Kaggle score* (`dice_per_image`) is Dice per image with 1 for an empty truth and an empty "
    "prediction, averaged over images; predicting every mask empty already scores about 0.78 "
    "at 22 % prevalence. The two cannot be compared."
)

PHANTOM_NOTE = (
    "With `data = None` everything runs on the built-in **phantom** (synthetic chest "
    "radiographs in the `siim-png` layout, read by the same code as the real data); its "
    "numbers show that the pipeline works, not what the paper measured on SIIM-ACR."
)


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def header(imports: str, extra_params: str = ""):
    """imports, the parameters cell, the config cell."""
    params = PARAMS + ("\n" + extra_params.strip("\n") if extra_params else "")
    return [
        code(imports + "\nfrom pneumolib.reproduce import notebook_config"),
        code(params, tags=("parameters",)),
        code(CONFIG),
    ]


def nb_eda():
    return [
        md(f"""
# 01 · Exploratory data analysis

The paper (section 3.1) uses the PNG re-packaging of the SIIM-ACR Pneumothorax data:
12,047 grey-scale chest X-rays of 1024 x 1024 pixels, 2,669 of them with a pneumothorax mask
(22 %), the rest with an all-black mask (its Table 1). Its EDA led to three preparation
steps (section 3.2): augmenting the minority class, resizing to 512 x 512, and normalising
with the training set's global mean and standard deviation (0.4828 / 0.2488).

This notebook shows the same facts for the data this run uses: counts and prevalence,
how large the masks are and where they lie, the pixel statistics, and a few examples.

{PHANTOM_NOTE}
"""),
        *header("from pneumolib import eda, plots", "n_examples = 8  # images in the sample grid"),
        md("""
## Counts and prevalence (the paper's Table 1)

Per split of the source (the `stage_1_train` / `stage_1_test` CSVs of the PNG layout) and in
total. The paper's row is shown for comparison.
"""),
        code("source = eda.open_data(cfg)\nprint(source)\neda.dataset_summary(source)"),
        code("eda.table1(source, with_paper=True)"),
        md("""
## Mask sizes

Areas at the training resolution (`image_size`), read from the image cache that training
uses (built here on first use: every image and mask resized once). Pneumothoraces range from
a thin rim along the pleura to a collapsed lung, so the areas span orders of magnitude; small
ones are what makes the pooled and the per-image Dice differ.
"""),
        code("dm = eda.prepare(cfg, source)\nareas = eda.mask_areas(dm)\nareas[[\"area_px\", \"area_frac\"]].describe()"),
        code("fig = plots.area_histogram(areas)"),
        md("""
## Where the masks lie

Per pixel, the share of positive images whose mask covers it. Pneumothorax collects at the
apices and along the lateral chest wall of either lung.
"""),
        code("fig = plots.heatmap(eda.mask_heatmap(dm))"),
        md("""
## Pixel statistics (normalisation)

The paper normalised with the training set's global mean and standard deviation. Training
here uses the statistics of the training *items* (originals plus the flipped and rotated
copies), computed once by the data module and saved next to the split.
"""),
        code("eda.pixel_stats_table(dm)"),
        md("## Examples (mask in red)"),
        code("fig = plots.overlay_grid(*eda.sample_images(dm, n=n_examples, seed=cfg.seed))"),
    ]


def nb_augmentation():
    return [
        md(f"""
# 02 · Augmentation and splits

To counter the class imbalance, the paper (section 3.2) augmented every **positive** image
twice, image and mask together: a horizontal flip, and a rotation by a random 3-7 degrees in
either direction with black fill. 2,669 positives became 8,007 and the data 17,385 items,
which it then split into train and test (its Table 2: 15,433 / 1,952).

Below: the paper's Figures 2 and 3 (an image and its mask: original, flipped, rotated), made
with the same functions (`pneumolib.prep.hflip`, `rotate`, `paper_angle`) that build the
training items; then the split tables of both protocols:

- `paper`: augment first, then split, as the paper did. A flipped or rotated copy of a test
  image then usually sits in the training set: the test set **leaks**. We count it.
- `clean` (our default): split the source images first, augment only the training positives.

{PHANTOM_NOTE}
"""),
        *header("from pneumolib import eda, plots",
                "example_index = None  # source index of the image to show, or None for the largest mask"),
        code("source = eda.open_data(cfg)\nexamples = eda.augmentation_examples(source, index=example_index, seed=cfg.seed)"),
        md("## Figure 2: an X-ray and its augmentations"),
        code("fig = plots.augmentation_figure(examples, \"image\")"),
        md("## Figure 3: its mask and the same augmentations"),
        code("fig = plots.augmentation_figure(examples, \"mask\")"),
        md("""
## The splits (the paper's Table 2), both protocols

Items per split and class, drawn with this run's seed and fractions (`test_frac` defaults to
the paper's 1,952 / 17,385). The paper's own table follows.
"""),
        code("splits = eda.split_tables(source, cfg)\nsplits[\"tables\"]"),
        code("eda.PAPER_TABLE2"),
        md("""
## Leakage

`test_sources`: source images with an item in test; `leaked_sources`: those that also have an
item (the original, its flip or its rotation) in train or validation; `leaked_test_frac`:
the share of test items whose source image was seen in training. Under `paper` most test
positives leak, which flatters every test number; `clean` has none.
"""),
        code("splits[\"leakage\"]"),
        code("print(f\"this run trains with protocol {cfg.protocol!r}\")\nsplits[\"tables\"].loc[cfg.protocol]"),
    ]


def nb_autoencoders():
    return [
        md(f"""
# 03 · The autoencoders

The paper's self-supervised step (section 3.4): the same U-Net, trained with MSE and the same
settings, once to reconstruct **X-rays** and once to reconstruct **masks**. Their weights
then seed the segmentation model in four of the six scenarios (notebook 04).

A trap in this design: a U-Net autoencoder with skip connections can copy its input through
the top (full-resolution) skip and learn almost nothing in its deep layers, so its encoder
holds little to transfer. We measure it: the test reconstruction error with the top skip
zeroed, next to the normal one. A large ratio means the network mostly copies.

{PHANTOM_NOTE}
"""),
        *header("from pneumolib import eda, paths, plots, runio, tables, train",
                "kinds = \"xray,mask\"  # autoencoders to train: xray, mask (the paper's); genesis, xray_noskip (pretext study)\n"
                "n_examples = 4  # test items in the reconstruction grids"),
        md("""
## Training

`xray`: input the normalised X-ray, target the same X-ray. `mask`: input the mask, target the
same mask. (The pretext study runs this notebook again with `genesis`: input an X-ray
distorted by the Models Genesis transforms, target the clean X-ray; and `xray_noskip`: the
X-ray autoencoder with every skip connection zeroed.)
"""),
        code("kind_list = [k.strip() for k in kinds.split(\",\") if k.strip()]\n"
             "summaries = {k: train.pretrain(cfg, k) for k in kind_list}\n"
             "{k: s[\"test\"] for k, s in summaries.items()}"),
        md("## Loss per epoch (read back from the run folders)"),
        code("runs = runio.read_runs(paths.results_dir(cfg.name), [train.AE_KINDS[k] for k in kind_list])\n"
             "fig = plots.plot_loss_curves(runs, names=tuple(runs))"),
        md("""
## The copy-through measurement

`mse`: test reconstruction error; `mse_top_skip_zeroed`: the same with the top skip
connection replaced by zeros; `mse_identity_baseline`: the error of predicting the mean.
"""),
        code("tables.copy_through_table(runs, names=tuple(runs))"),
        md("## Reconstructions: input, output, output with the top skip zeroed"),
        code("dm = eda.prepare(cfg)\n"
             "for k in kind_list:\n"
             "    fig = plots.reconstruction_grid(eda.reconstructions(cfg, k, n=n_examples, dm=dm), f\"{k} autoencoder\")"),
    ]


def nb_finetune():
    return [
        md(f"""
# 04 · Fine-tuning one scenario

**One template, run once per scenario** by `pneumo reproduce` (papermill sets `scenario`).
The paper's six initialisations of the segmentation U-Net (its Table 4, registry
`pneumolib.scenarios.SCENARIOS`):

| scenario | the paper's label |
|---|---|
| `resnet50` | ResNet-50 Encoder (ImageNet, segmentation_models_pytorch U-Net) |
| `ae_encoder` | Pretrained encoder only (X-ray autoencoder encoder, random decoder) |
| `ae_encoder_mask_decoder` | Pretrained encoder and decoder (X-ray AE encoder, mask AE decoder) |
| `random` | Randomly initialized (the benchmark) |
| `ae_full` | Autoencoder weights (X-ray AE encoder and decoder) |
| `ae_full_frozen` | Autoencoder weights (frozen encoder) |

Training follows the paper: BCE + Dice, Adam, early stopping on the validation loss
(min delta 0.001, patience 5); every epoch is also evaluated on the test split, as the paper
plots. The metrics of the best checkpoint (lowest validation loss) go to `metrics.json`.

{WHICH_DICE}
"""),
        *header("from pneumolib import paths, plots, runio, scenarios, tables, train",
                "scenario = \"random\"  # one of pneumolib.scenarios.ALL_SCENARIOS\n"
                "run_name = \"\"  # results folder under results/<profile>/; empty: the scenario name"),
        code("sc = scenarios.get_scenario(scenario)\nrun_dir = paths.results_dir(cfg.name) / (run_name or scenario)\nsc"),
        md("## Training"),
        code("summary = train.train_scenario(cfg, scenario, out=run_dir)"),
        md("## Per epoch: the four panels of Figures 5-7 (read back from `epochs.csv`)"),
        code("run = runio.read_run(run_dir)\n"
             "fig = plots.figure_group({scenario: run}, [scenario], f\"{sc.label} ({scenario})\")"),
        md("""
## The best checkpoint on validation and test

`dice_pooled` / `iou_pooled` are the numbers to hold against the paper's column;
`dice_per_image` is the Kaggle score, next to what predicting all-empty scores.
"""),
        code("tables.run_summary(run)"),
        code("fig = plots.plot_extra_metrics({scenario: run}, [scenario])"),
    ]


def nb_results():
    return [
        md(f"""
# 05 · Results: Figures 5-7 and Table 4

Drawn **only from the run files** (`results/<profile>/<run>/epochs.csv` and `metrics.json`),
so this notebook redraws in seconds and never trains. Each figure shows one group of
scenarios in the paper's four panels per epoch: (a) train loss, (b) validation loss,
(c) test Dice, (d) test IoU; the star marks the best epoch by validation loss, the
checkpoint Table 4 evaluates.

{WHICH_DICE}

The figures and Table 4 are also written to `figures/<profile>/` (`figure5.png`,
`figure6.png`, `figure7.png`, `extra_metrics.png`, `table4.csv`, `table4.md`).
"""),
        *header("from pneumolib import paths, plots, tables"),
        code("runs = tables.read_profile_runs(paths.results_dir(cfg.name))\nsorted(runs)"),
        md("""
## Figure 5: the first group

Random initialisation against the X-ray autoencoder's encoder **and** decoder, with the
encoder trainable or frozen. In the paper both fell behind the benchmark, the frozen one far
behind (0.48 and 0.23 Dice against 0.50).
"""),
        code("fig5 = plots.figure5(runs)"),
        md("""
## Figure 6: the second group

The X-ray autoencoder's encoder with a random decoder, or with the mask autoencoder's
decoder. In the paper both reached 0.53 Dice / 0.38 IoU, a little above the benchmark.
"""),
        code("fig6 = plots.figure6(runs)"),
        md("""
## Figure 7: the final selection

The benchmark, the best autoencoder scenario (here chosen as the one with the highest test
pooled Dice in `metrics.json`) and the ResNet-50 encoder (the paper's best, 0.60 / 0.44).
"""),
        code("print(\"best autoencoder scenario:\", plots.best_ae_scenario(runs))\nfig7 = plots.figure7(runs)"),
        md("""
## Table 4

Our pooled Dice / IoU of the best checkpoint on the test split next to the paper's numbers
(`paper_dice`, `paper_iou`, measured on the real SIIM-ACR data), then the Kaggle score, the
score of predicting every mask empty, Dice on positive images and the image-level AUC,
sensitivity and specificity.
"""),
        code("table = tables.table4(runs)\ntable"),
        code("figures = paths.figures_dir(cfg.name)\n"
             "{**plots.save_figures(runs, figures), **tables.write_table4(table, figures, runs)}"),
        md("""
## Beyond the paper

The Kaggle score per epoch (dashed: predicting every mask empty), Dice on positive images
only, and the image-level AUC; then the copy-through measurement of the autoencoders.
"""),
        code("fig = plots.plot_extra_metrics(runs)"),
        code("tables.copy_through_table(runs)"),
    ]


def nb_screening():
    return [
        md(f"""
# 06 · Screening X-rays of COVID-19 patients for pneumothorax

The paper ends by screening COVID-19 patients' chest X-rays for pneumothorax. This notebook
runs the full predict path of `pneumo predict` (read any PNG / JPEG / DICOM of any size and
mode, resize, model, post-process, write a mask and an overlay per image) over a folder laid
out like the public `covid-chestxray-dataset` (`metadata.csv` + `images/`, DATA.md section 6),
summarises the predictions by finding and view, and shows the most suspicious images.

By default (`covid_dir = None`) it screens **held-out phantom images** (generated with another
seed than the training phantom, written as a mix of PNG and JPEG, grey and RGB) so that the
notebook runs anywhere. Point `covid_dir` at the real collection to screen real patients.

The model: the finished main run with the best **validation** pooled Dice (never chosen on
test), or the run named in `checkpoint_run`. Its `postprocess.json` (the tuned triplet of the
image-level study), when present, sets the decision rule; otherwise threshold 0.5.
"""),
        *header("from pneumolib import paths, plots, screening, tables",
                "covid_dir = None  # folder with metadata.csv and images/ (covid-chestxray-dataset), or None\n"
                "checkpoint_run = \"\"  # run folder name under results/<profile>/; empty: the best on validation\n"
                "top_k = 6  # overlays shown"),
        code("folder = covid_dir or screening.heldout_phantom(cfg)\n"
             "run = screening.pick_run(cfg, checkpoint_run)\n"
             "print(\"screening\", folder, \"with\", run)"),
        code("df = screening.screen(folder, run, paths.results_dir(cfg.name) / \"screening\")\n"
             "df.head()"),
        md("## By finding and view"),
        code("summary = screening.summarise(df)\nsummary"),
        md("## The most suspicious images"),
        code("fig = screening.plot_most_suspicious(df, k=top_k)"),
        code("screening.write_outputs(df, summary, fig, paths.figures_dir(cfg.name))"),
    ]


def nb_leakage():
    return [
        md(f"""
# 07 · Leakage study: the paper's split protocol against a clean one

The paper augments every positive image (a flip and a rotation) **before** splitting, so a
flipped or rotated copy of a test image usually sits in the training set (notebook 02 counts
it). Here the same scenarios are trained under both protocols on the same data, and the
paper protocol's test split is cut into the items that have a copy in train/validation and
those that do not. A score that is higher on the leaked items is the leak at work.

{WHICH_DICE}
"""),
        *header("from pneumolib import paths, plots, studies"),
        code("table = studies.leakage_study(cfg)\ntable"),
        code("fig = plots.study_bars(table, x=\"scenario\", hue=[\"protocol\", \"test_items\"], "
             "title=\"Leakage: paper vs clean protocol\")"),
        code("studies.write_study(table, \"leakage\", paths.figures_dir(cfg.name), studies.LEAKAGE_NOTE, fig)"),
    ]


def nb_image_level():
    return [
        md(f"""
# 08 · Image-level decisions: triplet post-processing and a classification head

Most SIIM-ACR images are empty, and the Kaggle score gives 1 for an empty prediction on an
empty image, so deciding **whether** an image has a pneumothorax matters as much as drawing
it. Two ideas from the competition's winners, both tuned on the **validation** split only and
scored on test:

- the 1st place's *triplet*: an image is positive when more than `min_area` pixels exceed a
  top threshold; its mask is then every pixel above a lower, bottom threshold;
- the 4th place's image-level *classification head* (scenario `random_cls`): a mask is kept
  only when the head's probability passes a gate.

Each run's tuned triplet is written to its `postprocess.json`, which `pneumo predict` uses.

{WHICH_DICE}
"""),
        *header("from pneumolib import image_level, paths, reproduce, studies"),
        code("runs = {sc: paths.results_dir(cfg.name) / sc for sc in reproduce.scenario_order()}\n"
             "runs.update(studies.study_runs(cfg, \"image_level\"))\n"
             "sorted(runs)"),
        code("table = image_level.image_level_study(runs, paths.figures_dir(cfg.name))\ntable"),
    ]


def nb_pretext():
    return [
        md(f"""
# 09 · A pretext that cannot cheat

The paper's X-ray autoencoder is a U-Net with skip connections: it can pass its input
through the top skip and learn little in its encoder (notebook 03 measures this: the
*copy-through ratio*). Two pretexts that cannot take that shortcut, each transferred like the
paper's autoencoder:

- **Models Genesis** restoration (Zhou et al.): the input X-ray is distorted (non-linear
  intensity, local pixel shuffling, in-painting or out-painting) and the target is the clean
  X-ray, so copying the input is wrong by construction (`genesis_full`, `genesis_encoder`);
- an X-ray autoencoder **without skip connections**, whose reconstruction must pass the
  bottleneck (`noskip_encoder`).

{WHICH_DICE}
"""),
        *header("from pneumolib import paths, plots, studies"),
        code("table = studies.pretext_study(cfg)\ntable"),
        code("fig = plots.study_bars(table, x=\"scenario\", title=\"Pretext tasks: segmentation after transfer\")"),
        code("studies.write_study(table, \"pretext\", paths.figures_dir(cfg.name), studies.PRETEXT_NOTE, fig)"),
    ]


def nb_label_efficiency():
    return [
        md(f"""
# 10 · Label efficiency

Pretraining matters most when labels are scarce, so this field compares initialisations at
several label budgets. Every scenario is fine-tuned with 1 %, 10 % and 100 % of the
training labels (the same class-stratified subset of source images for every scenario; the
subset is cycled so that every run takes the same number of optimiser steps).

{WHICH_DICE}
"""),
        *header("from pneumolib import paths, plots, studies"),
        code("table = studies.label_efficiency_study(cfg)\ntable"),
        code("fig = plots.label_efficiency(table)"),
        code("studies.write_study(table, \"label_efficiency\", paths.figures_dir(cfg.name), "
             "studies.LABEL_EFFICIENCY_NOTE, fig)"),
    ]


NOTEBOOKS = {
    "01_eda": nb_eda,
    "02_augmentation": nb_augmentation,
    "03_autoencoders": nb_autoencoders,
    "04_finetune": nb_finetune,
    "05_results": nb_results,
    "06_covid_screening": nb_screening,
    "07_leakage": nb_leakage,
    "08_image_level": nb_image_level,
    "09_pretext": nb_pretext,
    "10_label_efficiency": nb_label_efficiency,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name``, with deterministic cell ids so regenerating is a no-op."""
    nb = new_notebook(cells=NOTEBOOKS[name]())
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name.replace('_', '-')}-{i:02d}"
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report notebooks that differ")
    ap.add_argument("--out", default=str(NB_DIR))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    differ = []
    for name in NOTEBOOKS:
        path = out / f"{name}.ipynb"
        text = render(name)
        if path.exists() and path.read_text() == text:
            continue
        differ.append(path)
        if not args.check:
            path.write_text(text)
    for p in differ:
        print(("differs: " if args.check else "wrote ") + str(p))
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
