"""The Markdown of one summary CSV: Table 4, the pairs, the studies, the realism comparison.

Each ``fmt_<name>`` turns ``figures/readme/<set>/<name>.csv`` into the text of block
``<set>/<name>`` (``*_short``: the README's shorter form); :mod:`pneumolib.reporting.summaries`
picks them from :data:`FORMATTERS`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import pandas as pd


def _f(v: Any, d: int = 3) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return "" if math.isnan(x) else f"{x:.{d}f}"


def _ci(r: pd.Series, m: str, d: int = 3) -> str:
    v = _f(r.get(m), d)
    lo, hi = r.get(f"{m}_ci95_lo"), r.get(f"{m}_ci95_hi")
    if v and _f(lo, d) and _f(hi, d):
        return f"{v} [{_f(lo, d)}, {_f(hi, d)}]"
    return v


def _pm(r: pd.Series, m: str) -> str:
    lo, hi = r.get(f"{m}_ci95_lo"), r.get(f"{m}_ci95_hi")
    try:
        return f"±{(float(hi) - float(lo)) / 2:.3f}"
    except (TypeError, ValueError):
        return ""


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _name(r: pd.Series) -> str:
    note = str(r.get("note") or "")
    stand = re.search(r"stand-in: smp Unet, (\w+) encoder", note)
    return f"`{r['scenario']}`" + (f" ({stand.group(1)} stand-in)" if stand else "")


def _over(df: pd.DataFrame) -> str:
    """What the intervals of a Table 4 resample, in words (column ``training_variance``)."""
    tv = df["training_variance"].astype(str) if "training_variance" in df else pd.Series(dtype=str)
    if len(tv) and tv.str.startswith("resampled").all():
        return "95 % bootstrap interval over training seeds and test images (two-level, docs/METHODS.md)"
    return ("95 % bootstrap interval over test images only: with one training seed the training variance "
            "is unmeasured, and these intervals do not rank the scenarios")


def fmt_table4(df: pd.DataFrame) -> str:
    multi = "n_seeds" in df and (pd.to_numeric(df["n_seeds"], errors="coerce").fillna(0) > 1).any()
    head = ["scenario", "`dice_pooled` [95 % CI]", "±", *(["sd over seeds"] if multi else []), "`iou_pooled`",
            "peak of the test curve", "paper Dice / IoU", "`dice_per_image` (Kaggle) [95 % CI]", "all-empty",
            "image AUC"]
    rows = []
    for _, r in df.iterrows():
        rows.append([_name(r), _ci(r, "dice_pooled"), _pm(r, "dice_pooled"),
                     *([_f(r.get("dice_pooled_seed_sd"))] if multi else []), _f(r.get("iou_pooled")),
                     _f(r.get("test_dice_peak")), f"{_f(r.get('paper_dice'), 2)} / {_f(r.get('paper_iou'), 2)}",
                     _ci(r, "dice_per_image"), _f(r.get("empty_baseline_dice_per_image")), _f(r.get("auc"))])
    r0 = df.iloc[0]
    n = f"{int(r0['n_test_images'])} test images ({int(r0['n_test_positive'])} positive)" \
        if not pd.isna(r0.get("n_test_images")) else "test images"
    seeds = f"; {int(r0['n_seeds'])} training seeds ({r0.get('seeds', '')}), mean over seeds" if multi else \
        "; one training seed"
    return (f"{n}{seeds}; best checkpoint by validation loss. `[lo, hi]`: {_over(df)}; `±` its half-width.\n\n"
            + _md(head, rows))


def fmt_table4_short(df: pd.DataFrame) -> str:
    """Table 4 for the README: pooled Dice with its interval and seed sd, beside the paper's."""
    multi = "n_seeds" in df and (pd.to_numeric(df["n_seeds"], errors="coerce").fillna(0) > 1).any()
    rows = [[_name(r), _ci(r, "dice_pooled"), *([_f(r.get("dice_pooled_seed_sd"))] if multi else []),
             _f(r.get("paper_dice"), 2)] for _, r in df.iterrows()]
    r0 = df.iloc[0]
    seeds = f"{int(r0['n_seeds'])} training seeds, mean over seeds" if multi else "one training seed"
    return (f"`dice_pooled` on {int(r0['n_test_images'])} test images, {seeds}; `[lo, hi]`: {_over(df)}.\n\n"
            + _md(["scenario", "`dice_pooled` [95 % CI]", *(["sd over seeds"] if multi else []), "paper's Dice"],
                  rows))


def _verdicts(df: pd.DataFrame) -> pd.Series:
    """Each pair's verdict (column ``verdict``, :func:`pneumolib.evaluation.uncertainty.verdict`)."""
    if "verdict" not in df:
        raise ValueError("this pairs.csv has no `verdict` column: it comes from an older rule (test images only); "
                         "collect the run again")
    return df["verdict"].astype(str)


def fmt_pairs(df: pd.DataFrame) -> str:
    """The pairs told apart and those not, as short lists (pooled Dice; the interval resamples
    seeds and test images when both scenarios have several seeds)."""
    def item(r: pd.Series) -> str:
        return f"`{r['a']}` − `{r['b']}` = {_f(r['diff'])} [{_f(r['lo'])}, {_f(r['hi'])}]"
    v = _verdicts(df)
    out = []
    for what, head in (("told apart", "Told apart ({k} of {n} pairs; the 95 % interval of the difference in pooled "
                                      "Dice over training seeds and test images excludes 0):"),
                       ("not told apart", "Not told apart ({k} of {n}; that interval includes 0):"),
                       ("training variance unmeasured (1 seed)",
                        "Not ranked ({k} of {n}): a scenario has one training seed, so the training variance is "
                        "unmeasured; the interval shown resamples test images only:")):
        sub = df[v == what]
        if what != "told apart" and sub.empty:
            continue
        out += [head.format(k=len(sub), n=len(df)), ""]
        out += [f"- {item(r)}" for _, r in sub.iterrows()] or ["- none"]
        out += [""]
    rest = df[~v.isin(["told apart", "not told apart", "training variance unmeasured (1 seed)"])]
    if not rest.empty:
        out += [f"Other ({len(rest)}):", ""] + [f"- {item(r)}: {v[i]}" for i, r in rest.iterrows()] + [""]
    return "\n".join(out[:-1]) + "\n"


def fmt_pairs_short(df: pd.DataFrame) -> str:
    """One paragraph for the README: how many pairs are told apart, and which are not."""
    v = _verdicts(df)
    apart = df[v == "told apart"]
    if (v == "training variance unmeasured (1 seed)").any():
        return (f"With one training seed the training variance is unmeasured: none of the {len(df)} pairs is "
                "ranked ([docs/RESULTS.md](docs/RESULTS.md)).\n")
    names = ", ".join(f"`{r['a']}` > `{r['b']}`" if float(r["diff"]) > 0 else f"`{r['b']}` > `{r['a']}`"
                      for _, r in apart.iterrows()) or "none"
    return (f"**{len(apart)} of the {len(df)} pairs** of scenarios are told apart (the 95 % interval of their "
            f"difference in pooled Dice, resampling training seeds and test images, excludes 0): {names}; "
            f"the other {len(df) - len(apart)} are not ([docs/RESULTS.md](docs/RESULTS.md)).\n")


def fmt_ae_choice(df: pd.DataFrame) -> str:
    """Figure 7's autoencoder scenario, chosen on validation, and how often resamples (of seeds
    and validation images, or of the images alone with one seed) choose it again."""
    chosen = df[df["chosen"].astype(str).str.lower() == "true"].iloc[0]
    over = ("training seeds and validation images" if int(chosen["n_seeds"]) > 1
            else "validation images only (one seed: training variance unmeasured)")
    lead = (f"Figure 7's autoencoder scenario is `{chosen['scenario']}`, chosen on validation pooled Dice (mean "
            f"over seeds); resampling {over}, it is chosen again in **{float(chosen['share']):.0%}** of the "
            "bootstrap resamples.\n\n")
    rows = [[f"`{r['scenario']}`", _f(r["val_dice_pooled"]), str(int(r["n_seeds"])), f"{float(r['share']):.0%}"]
            for _, r in df.iterrows()]
    return lead + _md(["autoencoder scenario", "validation `dice_pooled`", "seeds", "chosen in"], rows)


def fmt_realism(df: pd.DataFrame) -> str:
    return _md(["", "real SIIM-ACR (train annotations)", "phantom"],
               [[str(r["quantity"]), "" if pd.isna(r["real"]) else str(r["real"]),
                 "" if pd.isna(r["phantom"]) else str(r["phantom"])] for _, r in df.iterrows()])


def fmt_copy_through(df: pd.DataFrame) -> str:
    rows = [[f"`{r['autoencoder']}`", _f(r["mse"], 4), _f(r["mse_top_skip_zeroed"], 4),
             _f(r["ratio_zeroed_over_normal"], 1), _f(r["mse_identity_baseline"], 4), str(r.get("n_images", ""))]
            for _, r in df.iterrows()]
    return _md(["autoencoder", "test MSE", "MSE, top skip zeroed", "ratio", "MSE of predicting the mean",
                "test images"], rows)


def fmt_realism_short(df: pd.DataFrame) -> str:
    """One line: the phantom against the real annotations (area KS, heat-map correlation)."""
    q = df.set_index("quantity")["phantom"]
    ks = q.get("area KS statistic (phantom vs real)")
    corr = q.get("heat-map correlation (phantom vs real)")
    return (f"Measured against the real SIIM-ACR annotation table (notebook 01), the phantom's positive mask "
            f"areas differ by a two-sample Kolmogorov-Smirnov statistic of **{ks}** and its mean location heat "
            f"map correlates with the real one at Pearson **r = {corr}** ([docs/DATA.md](docs/DATA.md)).\n")


def _seeds(r: pd.Series) -> str:
    """A study row's training seeds (its interval resamples them only when several)."""
    n = r.get("n_seeds")
    return "" if n is None or pd.isna(n) else str(int(n))


def fmt_leakage(df: pd.DataFrame) -> str:
    rows = [[f"`{r['scenario']}`", r["protocol"], r["test_items"], f"{int(r['n_test_images'])} ({int(r['n_positive'])})",
             int(r["leaked_test_items"]), _seeds(r), _ci(r, "dice_pooled"), _ci(r, "dice_per_image")]
            for _, r in df.iterrows()]
    return _md(["scenario", "protocol", "test items", "n (positive)", "items with a copy in train/val", "seeds",
                "`dice_pooled`", "`dice_per_image`"], rows)


def fmt_image_level(df: pd.DataFrame) -> str:
    piv = df.pivot_table(index="run", columns="method", values="dice_per_image", aggfunc="first", sort=False)
    cols = [c for c in ("all_empty", "threshold", "triplet", "gate", "gate+triplet") if c in piv.columns]
    rows = [[f"`{run}`", *[_f(piv.loc[run, c]) for c in cols]] for run in piv.index]
    return ("Kaggle score (`dice_per_image`) on test, every parameter tuned on validation only; one run per row "
            "(the base seed's: training variance unmeasured).\n\n") + _md(
        ["run", *cols], rows)


def fmt_pretext(df: pd.DataFrame) -> str:
    rows = [[f"`{r['scenario']}`", r["pretrained_from"], _f(r["ae_copy_through_ratio"], 2), _seeds(r),
             _ci(r, "dice_pooled"), _ci(r, "dice_per_image")] for _, r in df.iterrows()]
    return _md(["scenario", "pretrained from", "autoencoder copy-through ratio", "seeds", "`dice_pooled`",
                "`dice_per_image`"], rows)


def fmt_label_efficiency(df: pd.DataFrame) -> str:
    fracs = sorted(df["label_frac"].unique())
    rows = []
    for sc, sub in df.groupby("scenario", sort=False):
        s = sub.set_index("label_frac")
        rows.append([f"`{sc}`", *[_ci(s.loc[f], "dice_pooled") if f in s.index else "" for f in fracs]])
    seeds = ", ".join(f"{f:.0%}: {int(df.loc[df['label_frac'] == f, 'n_seeds'].min())}" for f in fracs) \
        if "n_seeds" in df else "not recorded"
    return ("Pooled Dice [95 % CI] by share of the training labels (equal optimiser steps); training seeds per "
            f"column {seeds} (the interval resamples seeds and test images where several, test images only where "
            "one).\n\n" + _md(["scenario", *[f"{f:.0%}" for f in fracs]], rows))


FORMATTERS: dict[str, Callable[[pd.DataFrame], str]] = {
    "table4": fmt_table4, "table4_short": fmt_table4_short, "pairs": fmt_pairs, "ae_choice": fmt_ae_choice, "pairs_short": fmt_pairs_short,
    "realism": fmt_realism,
    "realism_short": fmt_realism_short, "copy_through": fmt_copy_through, "leakage": fmt_leakage,
    "image_level": fmt_image_level,
    "pretext": fmt_pretext, "label_efficiency": fmt_label_efficiency,
}
