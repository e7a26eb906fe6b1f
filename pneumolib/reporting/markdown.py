"""Tables as GitHub Markdown, and Table 4's Markdown page with the note on which Dice is which."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pneumolib import runio
from pneumolib.evaluation.uncertainty import OVER_SEEDS, UNMEASURED

from .runs import data_sources
from .tables import CI_METRICS, COLUMN_NOTES, DEFAULT_N_BOOT, as_float, ci_tag, table_level


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (floats to ``digits`` decimals, NaN blank)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], digits) for c in cols) + " |")
    return "\n".join(lines)


def _cell(mean: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """``"0.467 [0.391, 0.552]"``; the mean alone when there is no interval; blank for NaN."""
    m, l, h = as_float(mean), as_float(lo), as_float(hi)
    if math.isnan(m):
        return ""
    if math.isnan(l) or math.isnan(h):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{l:.{digits}f}, {h:.{digits}f}]"


def _seed_count_text(df: pd.DataFrame) -> str:
    n = sorted({int(v) for v in df["n_seeds"].dropna() if int(v) > 0}) if "n_seeds" in df.columns else []
    if not n:
        return "no finished runs"
    if len(n) == 1:
        return f"{n[0]} seed{'s' if n[0] != 1 else ''} per scenario"
    return f"{n[0]} to {n[-1]} seeds per scenario, column `n_seeds`"


def _one_seed(df: pd.DataFrame) -> tuple[list[str], int]:
    """The scenarios with exactly one seed, and how many scenarios have any run."""
    n = pd.to_numeric(df["n_seeds"], errors="coerce").fillna(0) if "n_seeds" in df.columns else df["scenario"] * 0
    return [str(s) for s, k in zip(df["scenario"], n) if k == 1], int((n > 0).sum())


def _interval_phrase(df: pd.DataFrame) -> str:
    one, runs = _one_seed(df)
    if not one:
        return ("**bootstrap interval over training seeds and test images** (each resample draws the seeds "
                "with replacement and the test images, the same test images for every seed")
    if len(one) == runs:
        return "**bootstrap interval over test images only** (one seed: each resample draws the test images"
    return ("**bootstrap interval over training seeds and test images** (over test images only where a "
            "scenario has one seed; each resample draws the seeds with replacement and the test images, the "
            "same test images for every seed")


def _training_variance_text(df: pd.DataFrame, pct: str) -> str:
    """What Table 4's intervals cover: training seeds and test images, or test images alone."""
    one, runs = _one_seed(df)
    if not one:
        return (f"The {pct} interval resamples **the training seeds and the test images** (a two-level "
                "bootstrap, `docs/METHODS.md`): it says how much the number would move with other seeds (or on "
                "another machine) and another test set of the same size.")
    which = "every scenario" if len(one) == runs else ", ".join(f"`{s}`" for s in one)
    return (f"**Training variance unmeasured** for {which} (one seed, column `training_variance`): there the "
            f"{pct} interval covers the test images only and says nothing about a rerun with another seed or on "
            "another machine, which can move a scenario as much as the gaps between scenarios. Do not rank "
            "scenarios on it; run `pneumo reproduce --seeds N` (N >= 5).")


def table4_markdown(df: pd.DataFrame, runs: Mapping[str, Any] | None = None,
                    choice: pd.DataFrame | None = None) -> str:
    """Table 4 as Markdown: ``mean [lo, hi]`` cells, a header on what the numbers are and which Dice is which.

    ``choice`` (:func:`pneumolib.reporting.tables.ae_choice`) adds how sure Figure 7's choice is."""
    sources = data_sources(runs) if runs else sorted({str(k) for k in df["data_kind"].dropna()})
    level = table_level(df)
    tag = ci_tag(level)
    boot = df.attrs.get("bootstrap") or {}
    n_boot = boot.get("n_boot", DEFAULT_N_BOOT)
    pct = f"{level * 100:g} %"
    has_ci = [m for m in CI_METRICS if f"{m}_{tag}_lo" in df.columns]
    fallback = [str(s) for s, n in zip(df["scenario"], df["note"]) if "metrics.json values, no interval" in str(n)]
    head = [
        "# Table 4: segmentation of the six initialisation scenarios",
        "",
        f"Each of our cells is **mean [{pct} interval]**: the mean over the training seeds of the "
        f"scenario ({_seed_count_text(df)}; every run is the best checkpoint by validation loss), and a "
        f"{pct} percentile {_interval_phrase(df)}; {n_boot} resamples, computed from each run's "
        "`test_per_image.csv`"
        + ("; where a source image has several test items, as under the paper protocol, whole source "
           "images are resampled with all their items (column `bootstrap_unit`)"
           if "bootstrap_unit" in df.columns and df["bootstrap_unit"].astype(str).str.startswith("source").any()
           else "") + "). " + _training_variance_text(df, pct) + " The sd over seeds is the table below "
        "the main one.",
        "",
        "Chosen on validation, reported on test: every cell is the checkpoint with the lowest "
        "**validation** loss. `test_dice_peak` is different on purpose: the highest pooled test Dice of any "
        "epoch (the peak of the per-epoch test curve of Figures 5-7), chosen **on the test split**, which "
        "is most likely what the paper's Table 4 reports; it flatters every scenario and is shown only so "
        "that the two are not confused.",
        "",
        "Which Dice is which:",
        "- `dice_pooled` / `iou_pooled` (ours): intersections and areas **summed over the whole test set** "
        "(pooled), then divided.",
        "- `paper_dice` / `paper_iou`: **the paper's numbers** (its Table 4), measured on the real "
        "SIIM-ACR data, most likely pooled as well: they are the paper's, not ours, and carry no interval.",
        "- `dice_per_image` (ours): the **Kaggle score**, Dice per image with 1 for empty/empty, averaged "
        "over test images; `empty_baseline_dice_per_image` is what predicting every mask empty scores "
        "(the share of test images with an empty mask): a Kaggle score near it means nothing was learned.",
        "- `dice_positive` (ours): mean per-image Dice over test images with a non-empty mask; `auc`, "
        "`sensitivity`, `specificity`: image-level (is the predicted mask non-empty?).",
        "",
        "Ours come from the data source each run names in its `metrics.json`: "
        + ("; ".join(sources) if sources else "unknown (no finished runs)") + ". "
        "Numbers on the built-in phantom are not comparable with the paper's.",
        "",
    ]
    if fallback:
        head += [f"No `test_per_image.csv` for {', '.join(f'`{s}`' for s in fallback)}: those rows show the "
                 "`metrics.json` numbers (mean over seeds) **without an interval**.", ""]
    head.append("")
    show = pd.DataFrame({"scenario": df["scenario"], "label": df["label"]})
    for m in ("dice_pooled", "iou_pooled", "paper_dice", "paper_iou", "test_dice_peak", "dice_per_image",
              "empty_baseline_dice_per_image", "dice_positive", "auc", "sensitivity", "specificity"):
        if m in has_ci:
            show[m] = [_cell(r[m], r[f"{m}_{tag}_lo"], r[f"{m}_{tag}_hi"]) for _, r in df.iterrows()]
        elif m in df.columns:
            show[m] = df[m]
    for c in ("n_seeds", "training_variance", "n_test_images", "n_test_positive", "best_epochs", "note"):
        if c in df.columns:
            show[c] = df[c]
    body = to_markdown(show)
    sd_cols = [f"{m}_seed_sd" for m in CI_METRICS if f"{m}_seed_sd" in df.columns]
    multi = "n_seeds" in df.columns and bool((df["n_seeds"].fillna(0) > 1).any())
    if multi and sd_cols:
        sd = df[["scenario", "n_seeds", *sd_cols]].rename(columns={c: c.removesuffix("_seed_sd") for c in sd_cols})
        spread = ["", "", "Spread over training seeds (sd of the seeds' values, ddof = 1; blank for one seed):", "",
                  to_markdown(sd)]
    else:
        spread = ["", "", "One training seed per scenario: no spread over seeds (run more seeds to see it)."]
    notes = ["", "Columns:"] + [f"- `{k}`: {v}" for k, v in COLUMN_NOTES.items() if k in show.columns]
    extra = ["", ae_choice_note(choice)] if choice is not None else []
    return "\n".join(head) + body + "\n".join(spread) + "\n" + "\n".join(notes + extra) + "\n"


def ae_choice_note(choice: pd.DataFrame) -> str:
    """One paragraph: Figure 7's autoencoder scenario and how sure its choice on validation is
    (:func:`pneumolib.reporting.tables.ae_choice`)."""
    a = choice.attrs
    chosen, share, n_boot = a.get("chosen"), as_float(a.get("share")), a.get("n_boot", DEFAULT_N_BOOT)
    if not chosen:
        return "Figure 7: no autoencoder scenario has a validation score to choose from."
    head = (f"Figure 7's autoencoder scenario, `{chosen}`, is chosen on **validation** pooled Dice "
            "(mean over seeds; the test split plays no part). ")
    if a.get("missing") or math.isnan(share):
        return head + ("How sure the choice is cannot be said: no `val_per_image.csv` for "
                       + (", ".join(f"`{m}`" for m in a.get("missing") or []) or "every candidate") + ".")
    one = [str(n) for n in a.get("one_seed") or []]
    over = "training seeds and validation images"
    if a.get("over") != OVER_SEEDS and one and len(one) >= len(choice):
        over = "validation images only (training variance unmeasured: one seed)"
    elif a.get("over") != OVER_SEEDS:
        over += f" (validation images only for {', '.join(f'`{n}`' for n in one)}: one seed)"
    return head + (f"It would be chosen again in **{share:.0%}** of {n_boot} bootstrap resamples of the {over}"
                   + ("; another scenario in the rest." if share < 1 else ".")
                   + (" A coin toss between scenarios, not a finding." if share < 0.8 else ""))


def write_ae_choice(choice: pd.DataFrame, folder: Path | str) -> dict[str, Path]:
    """Write :func:`pneumolib.reporting.tables.ae_choice` as ``ae_choice.csv`` and ``ae_choice.md``."""
    folder = Path(folder)
    md = "# How sure Figure 7's choice is\n\n" + ae_choice_note(choice) + "\n\n" + to_markdown(choice) + "\n"
    return {"csv": runio.atomic_write_csv(folder / "ae_choice.csv", choice),
            "md": runio.atomic_write_text(folder / "ae_choice.md", md),
            "json": runio.atomic_write_json(folder / "ae_choice.json",
                                            {k: v for k, v in choice.attrs.items() if k in ("chosen", "share")})}


def write_table4(df: pd.DataFrame, folder: Path | str, runs: Mapping[str, Mapping[str, Any]] | None = None,
                 choice: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``table4.csv`` and ``table4.md`` (with the note on which Dice; with ``choice``, how
    sure Figure 7's choice is) into ``folder``."""
    folder = Path(folder)
    return {
        "csv": runio.atomic_write_csv(folder / "table4.csv", df),
        "md": runio.atomic_write_text(folder / "table4.md", table4_markdown(df, runs, choice)),
    }


def write_pairs(df: pd.DataFrame, folder: Path | str) -> dict[str, Path]:
    """Write the pairwise comparison (:func:`pneumolib.reporting.tables.pairwise_table`) as
    ``pairs.csv`` and ``pairs.md`` into ``folder``."""
    folder = Path(folder)
    return {"csv": runio.atomic_write_csv(folder / "pairs.csv", df),
            "md": runio.atomic_write_text(folder / "pairs.md", pairs_markdown(df))}


def pairs_markdown(df: pd.DataFrame) -> str:
    """The pairwise comparison as Markdown, with the verdict rule on top."""
    one = "verdict" in df.columns and bool((df["verdict"] == UNMEASURED).any())
    note = ("# Which scenarios can be told apart\n\nEach row: scenario `a` minus scenario `b` in pooled test Dice "
            "(mean over seeds), with a 95 % bootstrap interval over **training seeds and test images** (each "
            "resample draws every scenario's seeds with replacement, independently, and the test images once for "
            "both, so which images are hard cancels). `verdict`: *told apart* only when both scenarios have "
            "several seeds and that interval excludes 0; `lo_images` / `hi_images` is the interval over test "
            "images alone, for comparison (it ignores training variance and is not a verdict).\n\n")
    if one:
        note += ("**Training variance unmeasured** where a scenario has one seed (`verdict` says so, `told_apart` "
                 "is blank): a rerun with another seed, or on another machine, can move a scenario as much as "
                 "the gaps between scenarios, so those pairs are not ranked. Run `pneumo reproduce --seeds N` "
                 "(N >= 5).\n\n")
    return note + to_markdown(df) + "\n"
