"""Do the verdicts of one collected run hold in another, and what would separate the rest?

Blocks of :mod:`pneumolib.reporting.summaries` that read two collected sets, or one set's
pairs and Table 4 together:

- ``replication/verdicts.<a>.<b>`` (``verdicts_short``: its first sentence): every pair's
  verdict in set ``a`` and in set ``b`` (e.g. the same seeds on another machine, or other
  seeds), and how many agree, flip sign, or change from told apart to not (:func:`agreement`).
- ``replication/spread.<a>.<b>`` (``spread_short``: its first sentence): how far single runs
  (same scenario, same seed) and seed-means move from ``a`` to ``b`` (:func:`spread`; needs
  each set's ``runs.csv``).
- ``<set>/separation`` (``separation_short``: one sentence): for each pair not told apart, the
  seeds (at this test set) or test images that would make its interval exclude 0 **if the
  observed difference were the true one** (:func:`separation`), an optimistic planning
  figure, not a promise.

The projection keeps the measured interval's two parts apart: the images-only interval
(``lo_images``/``hi_images``) gives the test-image part, and what the seed-and-image interval
adds on top of it is the seed part, which shrinks as 1/seeds. Both are read as normal
half-widths (half-width / 1.96).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

Z = 1.959963984540054  # the 97.5 % normal quantile: 95 % two-sided
#: Above this, "seeds needed" is written as "more than" this.
MAX_SEEDS = 100
#: The seed count at which the test-image multiple is given.
SEEDS_FOR_IMAGES = 20


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pair(r: pd.Series) -> str:
    return f"`{r['a']}` − `{r['b']}`"


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The pairs of two ``pairs.csv`` tables side by side.

    Columns ``a, b, diff_1, lo_1, hi_1, verdict_1, diff_2, lo_2, hi_2, verdict_2, outcome``;
    ``outcome``: "same verdict", "opposite sign" (told apart in one run with a difference of
    the other sign in the other), "told apart in one only".
    """
    m = a.merge(b, on=["a", "b"], suffixes=("_1", "_2"))
    out = []
    for _, r in m.iterrows():
        apart = [r["verdict_1"] == "told apart", r["verdict_2"] == "told apart"]
        if any(apart) and _sign(r["diff_1"]) != _sign(r["diff_2"]):
            outcome = "opposite sign"
        elif r["verdict_1"] == r["verdict_2"]:
            outcome = "same verdict"
        else:
            outcome = "told apart in one only"
        out.append({**{k: r[k] for k in ("a", "b", "diff_1", "lo_1", "hi_1", "verdict_1", "diff_2", "lo_2", "hi_2",
                                          "verdict_2")}, "outcome": outcome})
    return pd.DataFrame(out)


def fmt_agreement(df: pd.DataFrame, name_1: str, name_2: str, short: bool = False) -> str:
    n = len(df)
    counts = df["outcome"].value_counts()
    both = int(((df["verdict_1"] == "told apart") & (df["verdict_2"] == "told apart")
                & (df["outcome"] == "same verdict")).sum())
    lead = (f"Of the {n} pairs, **{int(counts.get('same verdict', 0))} have the same verdict** in both runs "
            f"({both} told apart in both, with the same sign), **{int(counts.get('opposite sign', 0))} have the "
            f"opposite sign** with a told-apart verdict in one of them, and "
            f"{int(counts.get('told apart in one only', 0))} are told apart in one run only.\n\n")
    if short:
        return lead.replace(f"Of the {n} pairs", f"Of the {n} pairs of `{name_1}` and `{name_2}`").rstrip() + "\n"

    def cell(r: pd.Series, k: int) -> str:
        return f"{r[f'diff_{k}']:+.3f} [{r[f'lo_{k}']:.3f}, {r[f'hi_{k}']:.3f}] {r[f'verdict_{k}']}"

    rows = [[_pair(r), cell(r, 1), cell(r, 2), r["outcome"]] for _, r in df.iterrows()]
    return lead + _md(["pair (pooled Dice)", f"`{name_1}`", f"`{name_2}`", "outcome"], rows)


def spread(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: how far test pooled Dice moves between two ``runs.csv`` tables for the same
    seeds (``max_abs_run``: the largest move of one run; ``mean_abs_run``; ``seed_mean_move``: the
    move of the mean over the seeds both have)."""
    m = a.merge(b, on=["scenario", "seed"], suffixes=("_1", "_2"))
    m["d"] = m["dice_pooled_2"] - m["dice_pooled_1"]
    rows = []
    for sc, g in m.groupby("scenario", sort=False):
        rows.append({"scenario": sc, "seeds": len(g), "max_abs_run": float(g["d"].abs().max()),
                     "mean_abs_run": float(g["d"].abs().mean()), "seed_mean_move": float(g["d"].mean()),
                     "seed_sd_1": float(g["dice_pooled_1"].std(ddof=1)) if len(g) > 1 else math.nan,
                     "seed_sd_2": float(g["dice_pooled_2"].std(ddof=1)) if len(g) > 1 else math.nan})
    return pd.DataFrame(rows)


def fmt_spread(df: pd.DataFrame, name_1: str, name_2: str, short: bool = False) -> str:
    lead = (f"Test pooled Dice of the same runs (scenario and seed) in `{name_1}` and `{name_2}`: the largest move "
            f"of a single run is **{df['max_abs_run'].max():.3f}**, the largest move of a scenario's seed-mean "
            f"**{df['seed_mean_move'].abs().max():.3f}**; the seed sd within one run set is "
            f"{df[['seed_sd_1', 'seed_sd_2']].min().min():.3f} to {df[['seed_sd_1', 'seed_sd_2']].max().max():.3f}."
            "\n\n")
    if short:
        return lead.rstrip() + "\n"
    rows = [[f"`{r['scenario']}`", int(r["seeds"]), f"{r['max_abs_run']:.3f}", f"{r['mean_abs_run']:.3f}",
             f"{r['seed_mean_move']:+.3f}", f"{r['seed_sd_1']:.3f}", f"{r['seed_sd_2']:.3f}"] for _, r in df.iterrows()]
    return lead + _md(["scenario", "seeds", "largest move of one run", "mean move of one run",
                       "move of the seed-mean", f"seed sd, `{name_1}`", f"seed sd, `{name_2}`"], rows)


def separation(pairs: pd.DataFrame, n_seeds: int, n_images: int) -> pd.DataFrame:
    """For every pair not told apart: the seeds per scenario (at this test set), and the
    multiple of the test set (at :data:`SEEDS_FOR_IMAGES` seeds), under which the 95 % interval
    would exclude 0 if the observed difference were the true one.

    Columns ``a, b, diff, half_width, se_images, se_seeds, seeds_needed, images_needed`` (the
    ``*_needed`` are NaN where no finite amount suffices, e.g. a difference of 0).
    """
    rows = []
    for _, r in pairs[pairs["verdict"] == "not told apart"].iterrows():
        se = (r["hi"] - r["lo"]) / (2 * Z)
        se_img = (r["hi_images"] - r["lo_images"]) / (2 * Z)
        se_seed2 = max(se ** 2 - se_img ** 2, 0.0)
        target2 = (abs(r["diff"]) / Z) ** 2
        seeds = math.nan
        if target2 > se_img ** 2 and se_seed2 > 0:
            seeds = math.ceil(se_seed2 * n_seeds / (target2 - se_img ** 2))
        elif target2 > se_img ** 2:
            seeds = n_seeds
        rest = target2 - se_seed2 * n_seeds / SEEDS_FOR_IMAGES
        images = se_img ** 2 / rest if rest > 0 else math.nan
        rows.append({"a": r["a"], "b": r["b"], "diff": r["diff"], "half_width": (r["hi"] - r["lo"]) / 2,
                     "se_images": se_img, "se_seeds": math.sqrt(se_seed2), "seeds_needed": seeds,
                     "images_needed": images, "n_images": n_images})
    return pd.DataFrame(rows)


def fmt_separation(df: pd.DataFrame, n_seeds: int, n_images: int, short: bool = False) -> str:
    if df.empty:
        return "Every pair is told apart.\n"
    if short:
        few = int((df["seeds_needed"] <= 10).sum())
        never = int(df["seeds_needed"].isna().sum())
        return (f"Of the {len(df)} pairs not told apart, {few} would be separated by at most 10 seeds and {never} by "
                f"no number of seeds at these {n_images} test images, if their observed differences were the true "
                "ones (an optimistic projection, [docs/RESULTS.md](docs/RESULTS.md)).\n")

    def seeds(v: float) -> str:
        if math.isnan(v):
            return f"no number: {n_images} test images are too few"
        return f"more than {MAX_SEEDS}" if v > MAX_SEEDS else str(int(v))

    def images(v: float) -> str:
        if math.isnan(v):
            return f"no number: {SEEDS_FOR_IMAGES} seeds are too few"
        return f"these {n_images}" if v <= 1 else f"{v:.1f} x ({int(math.ceil(v * n_images))})"

    feasible = df[df["seeds_needed"] <= 10]
    lead = (f"For the {len(df)} pairs not told apart, what would separate them **if the observed difference were "
            f"the true one** (optimistic: a difference near 0 may be 0): seeds per scenario at these {n_images} "
            f"test images, or the test set it would take with {SEEDS_FOR_IMAGES} seeds. {len(feasible)} of them "
            f"would need at most 10 seeds. Longer training is not modelled: it changes the differences themselves."
            f"\n\n")
    rows = [[_pair(r), f"{r['diff']:+.3f}", f"±{r['half_width']:.3f}", f"{r['se_seeds']:.3f} / {r['se_images']:.3f}",
             seeds(r["seeds_needed"]), images(r["images_needed"])] for _, r in df.iterrows()]
    return lead + _md(["pair", "difference", f"95 % half-width now ({n_seeds} seeds)",
                       "seed / image part (standard errors)", "seeds needed", f"test images needed at "
                       f"{SEEDS_FOR_IMAGES} seeds"], rows)


def block(key: str, root: Path) -> str:
    """The Markdown of ``replication/<kind>.<a>.<b>`` or ``<set>/separation[_short]``."""
    set_name, name = key.split("/", 1)
    if set_name != "replication":
        t4 = pd.read_csv(root / set_name / "table4.csv")
        n_seeds, n_images = int(t4["n_seeds"].min()), int(t4["n_test_images"].iloc[0])
        pairs = pd.read_csv(root / set_name / "pairs.csv")
        return fmt_separation(separation(pairs, n_seeds, n_images), n_seeds, n_images, name == "separation_short")
    kind, a, b = name.split(".")
    short = kind.endswith("_short")
    if kind.removesuffix("_short") == "verdicts":
        return fmt_agreement(agreement(pd.read_csv(root / a / "pairs.csv"), pd.read_csv(root / b / "pairs.csv")), a, b,
                             short)
    if kind.removesuffix("_short") == "spread":
        return fmt_spread(spread(pd.read_csv(root / a / "runs.csv"), pd.read_csv(root / b / "runs.csv")), a, b, short)
    raise KeyError(f"unknown replication block {key!r}: (verdicts|spread)[_short].<a>.<b>")
