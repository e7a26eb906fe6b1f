"""One self-contained HTML report of a profile's results, to open in a browser or mail.

:func:`write_report` gathers what ``pneumo reproduce`` left behind for one profile:

- ``figures/<profile>/``: Figures 5-7, Table 4 (``table4.csv`` / ``table4.md``) and any
  further study figures and tables (every ``.png``; every ``.csv`` or ``.md``, a ``.md`` next
  to a same-stem ``.csv`` or ``.png`` being its caption);
- ``results/<profile>/<run>/metrics.json`` and ``config.json``: the data source and the
  provenance of every run (commit, versions, device, config);
- ``papermill_runs/<profile>/*.done.json``: the time each notebook took.

and writes them into ONE HTML file (default ``figures/<profile>/report.html``): images are
embedded as base64 ``data:`` URIs, the style sheet is inline, there is no JavaScript and no
link to anything outside the file. Every piece of text read from the files is escaped. What
is expected but missing is said in the report (e.g. "figure6.png not found: run pneumo
reproduce --profile demo"); only a missing figures folder is an error.

    python -m pneumolib.reporting.report --profile demo [--out report.html]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from pneumolib import __version__, paths, runio
from pneumolib.errors import PneumoError

from .figures import best_ae_scenario
from .html import (
    CSS,
    IMAGE_TYPES,
    csv_to_html,
    esc,
    fmt_seconds,
    html_table,
    img,
    md_notes_around_table,
    md_title,
    md_to_html,
    missing,
)


class ReportError(FileNotFoundError, PneumoError):
    """The figures folder of the profile does not exist (nothing to report yet)."""


#: Figures 5-7: (file stem, title, the scenarios drawn, one line per scenario).
MAIN_FIGURES = (
    ("figure5", "Figure 5: first group (X-ray autoencoder encoder + decoder)",
     "randomly initialised U-Net (random), the X-ray autoencoder's weights (ae_full) and the same "
     "with the encoder frozen (ae_full_frozen)"),
    ("figure6", "Figure 6: second group (X-ray autoencoder encoder; random or mask-autoencoder decoder)",
     "randomly initialised U-Net (random), the X-ray autoencoder's encoder with a random decoder "
     "(ae_encoder) and with the mask autoencoder's decoder (ae_encoder_mask_decoder)"),
    ("figure7", "Figure 7: final selection",
     "randomly initialised U-Net (random), the best autoencoder scenario by validation pooled Dice "
     "({best}) and the ResNet encoder (resnet50)"),
)

PANELS_CAPTION = (
    "Four panels per epoch: (a) train loss and (b) validation loss (BCE + Dice), (c) test Dice "
    "and (d) test IoU, both pooled over the test split (intersections and areas summed over all "
    "test images, then divided). A star marks each run's best epoch by validation loss, the "
    "checkpoint Table 4 evaluates."
)

#: Study stems shown first, in this order; any other stem follows alphabetically.
KNOWN_STUDIES = ("extra_metrics", "image_level", "leakage", "pretext", "label_efficiency", "screening")

#: Headings of known studies (a ``.md`` note's own ``#`` title takes precedence).
STUDY_TITLES = {
    "extra_metrics": "Additional test metrics per epoch (Kaggle score, Dice on positives, AUC)",
    "image_level": "Image-level detection",
    "leakage": "Patient leakage between splits",
    "pretext": "Pretext (autoencoder) training",
    "label_efficiency": "Label efficiency",
    "screening": "Screening",
}

#: Captions of known figures without a ``.md`` note of their own.
STUDY_CAPTIONS = {
    "extra_metrics": "Per-epoch test metrics beyond the paper: the Kaggle score (per-image Dice, 1 when "
                     "truth and prediction are both empty; dashed: the score of predicting every mask "
                     "empty), mean Dice over positive images only, and image-level AUC.",
}


# -- what the folders hold ----------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_markers(profile: str) -> list[dict[str, Any]]:
    """The papermill completion markers (``papermill_runs/<profile>/*.done.json``) by finish time."""
    d = paths.papermill_dir(profile)
    if not d.is_dir():
        return []
    out = [m for m in (_read_json(p) for p in sorted(d.glob("*.done.json"))) if m is not None]
    return sorted(out, key=lambda m: str(m.get("finished_at", "")))


def _read_runs(profile: str) -> dict[str, dict[str, Any]]:
    """``{name: metrics.json}`` of the finished runs of ``profile`` (no pandas needed)."""
    d = paths.results_dir(profile)
    if not d.is_dir():
        return {}
    out = {}
    for f in sorted(p for p in d.iterdir() if p.is_dir()):
        m = _read_json(f / "metrics.json")
        if m is not None:
            out[f.name] = m
    return out


def data_source_lines(runs: Mapping[str, Mapping[str, Any]], markers: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per distinct data source of the runs (from ``metrics.json`` ``data``)."""
    out: list[str] = []
    for m in runs.values():
        d = m.get("data") or {}
        if not d:
            continue
        kind, root = d.get("kind", "unknown"), d.get("root", "?")
        where = f"built-in phantom ({root})" if kind == "phantom" else f"real data: {root} (layout {kind})"
        extra = [f"protocol {d['protocol']}" if d.get("protocol") else "",
                 f"{d['n_images']} images" if d.get("n_images") is not None else "",
                 f"fingerprint {str(d['fingerprint'])[:12]}" if d.get("fingerprint") else ""]
        line = where + "".join(f", {x}" for x in extra if x)
        if line not in out:
            out.append(line)
    if not out:
        datas = {(mk.get("parameters") or {}).get("data") for mk in markers}
        for v in sorted(datas, key=str):
            out.append("built-in phantom (from the notebook parameters)" if v is None
                       else f"real data: {v} (from the notebook parameters)")
    return out


def _study_stems(folder: Path) -> list[str]:
    taken = {f"figure{i}" for i in (5, 6, 7)} | {"table4", "report"}
    stems = {p.stem for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".")
             and (p.suffix.lower() in IMAGE_TYPES or p.suffix.lower() in (".csv", ".md"))
             and p.stem not in taken}
    return [s for s in KNOWN_STUDIES if s in stems] + sorted(stems - set(KNOWN_STUDIES))


def _files_of(folder: Path, stem: str) -> dict[str, Path]:
    return {p.suffix.lower(): p for p in sorted(folder.glob(f"{_glob_escape(stem)}.*"))
            if p.is_file() and p.stem == stem}


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


# -- sections ----------------------------------------------------------------------------------------
def _section_summary(profile: str, runs, markers, figs: Path) -> str:
    rows = [("Profile", esc(profile)),
            ("Data", "<br>".join(esc(x) for x in data_source_lines(runs, markers))
             or esc("unknown: no finished run and no notebook marker found")),
            ("Generated", esc(datetime.now(timezone.utc).isoformat(timespec="seconds")
                             + f" (pneumolib {__version__})")),
            ("Figures folder", esc(figs)),
            ("Finished runs", esc(", ".join(runs) if runs else "none found in " + str(paths.results_dir(profile))))]
    if markers:
        total = sum(float(m.get("seconds") or 0) for m in markers)
        last = max(str(m.get("finished_at", "")) for m in markers)
        rows.append(("Total run time", esc(f"{fmt_seconds(total)} over {len(markers)} notebook(s) "
                                          f"(sum of the papermill markers; last finished {last})")))
    else:
        rows.append(("Total run time", esc(f"unknown: no papermill markers in {paths.papermill_dir(profile)}")))
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    out = f'<table class="meta"><tbody>{body}</tbody></table>'
    if markers:
        trows = [(m.get("name", "?"), fmt_seconds(float(m.get("seconds") or 0)), m.get("finished_at", ""))
                 for m in markers]
        out += ("<details><summary>Time per notebook</summary>"
                + html_table(["notebook", "time", "finished (UTC)"], trows) + "</details>")
    if not runs:
        out += missing(f"No finished run under {paths.results_dir(profile)}: run pneumo reproduce --profile {profile}")
    if any((m.get("data") or {}).get("kind") == "phantom" for m in runs.values()):
        out += ('<p class="note">Numbers on the built-in phantom test the pipeline; they are not '
                "comparable with the paper's, which were measured on the real SIIM-ACR data.</p>")
    return out


def _section_figures(profile: str, figs: Path, runs) -> str:
    parts = []
    chosen = _read_json(figs / "ae_choice.json") or {}  # notebook 05's choice over seeds, when written
    best = chosen.get("chosen") or best_ae_scenario(runs)
    for stem, title, drawn in MAIN_FIGURES:
        path = figs / f"{stem}.png"
        parts.append(f"<h3>{esc(title)}</h3>")
        if not path.is_file():
            parts.append(missing(f"{path.name} not found: run pneumo reproduce --profile {profile}"))
            continue
        drawn = drawn.format(best=best or "none finished")
        caption = f"{title}. Lines: {drawn}. {PANELS_CAPTION}"
        parts.append(f"<figure>{img(path, title)}<figcaption>{esc(caption)}</figcaption></figure>")
    return "\n".join(parts)


def _section_table4(profile: str, figs: Path) -> tuple[str, str]:
    csv, md = figs / "table4.csv", figs / "table4.md"
    md_text = md.read_text(encoding="utf-8") if md.is_file() else None
    title = (md_title(md_text) if md_text else None) or "Table 4: segmentation of the six initialisation scenarios"
    parts = []
    if csv.is_file():
        above, below = md_notes_around_table(md_text) if md_text is not None else ("", "")
        parts += [above, csv_to_html(csv), below]
        if md_text is None:
            parts.append(missing(f"table4.md not found (the notes on which Dice is which): "
                                  f"run pneumo reproduce --profile {profile}"))
    elif md_text is not None:
        parts.append(md_to_html(md_text, tables=True))
        parts.append('<p class="note">table4.csv not found: the table above is the Markdown one.</p>')
    else:
        parts.append(missing(f"table4.csv and table4.md not found: run pneumo reproduce --profile {profile}"))
    return title, "\n".join(parts)


def _section_studies(figs: Path) -> str:
    parts = []
    for stem in _study_stems(figs):
        files = _files_of(figs, stem)
        md_text = files[".md"].read_text(encoding="utf-8") if ".md" in files else None
        title = (md_title(md_text) if md_text else None) or STUDY_TITLES.get(stem) \
            or stem.replace("_", " ").replace("-", " ").capitalize()
        parts.append(f'<h3 id="study-{esc(stem)}">{esc(title)} <small class="note">({esc(stem)})</small></h3>')
        has_table = ".csv" in files
        above, below = "", ""
        if md_text is not None and has_table:
            above, below = md_notes_around_table(md_text)
        elif md_text is not None:
            above = md_to_html(md_text, tables=True)
        parts.append(above)
        for ext in IMAGE_TYPES:
            if ext in files:
                cap = STUDY_CAPTIONS.get(stem, "") if md_text is None else ""
                cap_html = f"<figcaption>{esc(files[ext].name)}{': ' + esc(cap) if cap else ''}</figcaption>"
                parts.append(f"<figure>{img(files[ext], title)}{cap_html}</figure>")
        if has_table:
            parts.append(csv_to_html(files[".csv"]))
        parts.append(below)
    if not parts:
        return '<p class="note">No further figures or tables in the figures folder.</p>'
    return "\n".join(parts)


def _device(prov: Mapping[str, Any]) -> str:
    d = prov.get("device") or {}
    if not d:
        return ""
    if d.get("cuda") and d.get("gpus"):
        gpus = list(d["gpus"])
        names = sorted(set(gpus))
        return ", ".join(f"{gpus.count(n)}x {n}" if gpus.count(n) > 1 else n for n in names)
    return f"CPU ({d.get('cpu_count', '?')} cores, {d.get('torch_threads', '?')} torch threads)"


def _commit(prov: Mapping[str, Any]) -> tuple[str, str]:
    g = prov.get("git") or {}
    sha = g.get("commit")
    if not sha:
        return "unknown", ""
    return str(sha), " (uncommitted changes)" if g.get("dirty") else ""


def _pick_config(profile: str, runs) -> tuple[str | None, dict[str, Any] | None, list[tuple[str, list[str]]]]:
    """(run name, its config, [(other run, keys that differ)]) from the runs' ``config.json``."""
    base = paths.results_dir(profile)
    configs = {}
    for name, m in runs.items():
        cfg = _read_json(base / name / "config.json")
        if cfg is None:
            cfg = (m.get("provenance") or {}).get("config")
        if isinstance(cfg, dict):
            configs[name] = cfg
    if not configs:
        return None, None, []
    name = "random" if "random" in configs else next(iter(configs))
    ref = configs[name]
    diffs = []
    for other, cfg in configs.items():
        keys = sorted(k for k in set(ref) | set(cfg) if ref.get(k) != cfg.get(k))
        if other != name and keys:
            diffs.append((other, keys))
    return name, ref, diffs


def _section_provenance(profile: str, runs) -> str:
    if not runs:
        return missing(f"No run folder with a metrics.json under {paths.results_dir(profile)}: "
                        f"run pneumo reproduce --profile {profile}")
    header = ["run", "task", "best epoch", "epochs run", "fit seconds", "device", "git commit",
              "torch", "lightning", "finished (UTC)"]
    rows, num = [], [False, False, True, True, True, False, False, False, False, False]
    for name, m in runs.items():
        prov = m.get("provenance") or {}
        ver = prov.get("versions") or {}
        sha, dirty = _commit(prov)
        fit = m.get("fit_seconds")
        rows.append([name, m.get("task", ""), m.get("best_epoch", ""), m.get("epochs_run", ""),
                     f"{float(fit):.1f}" if isinstance(fit, (int, float)) else "", _device(prov),
                     sha + dirty, ver.get("torch") or "",
                     ver.get("pytorch-lightning") or ver.get("lightning") or "", prov.get("time_utc", "")])
    out = [html_table(header, rows, num)]
    shas = {_commit(m.get("provenance") or {})[0] for m in runs.values()}
    if len(shas) > 1:
        out.append('<p class="note">The runs come from more than one commit.</p>')
    kept = _read_json(paths.papermill_dir(profile) / "kept_results.json")
    if kept and kept.get("kept"):
        items = "".join(f"<li>{esc(k)}</li>" for k in kept["kept"])
        out.append(f'<p class="note">Kept deliberately ({esc(kept.get("how", ""))}, {esc(kept.get("decided_at", ""))}):'
                   f' these runs came from other code on the results path than '
                   f'{esc((kept.get("current_code") or {}).get("results", "?"))}:</p><ul>{items}</ul>')
    name, cfg, diffs = _pick_config(profile, runs)
    if cfg is None:
        out.append(missing("No config.json found in the run folders."))
    else:
        out.append(f"<details><summary>Configuration of the profile (from {esc(name)}/config.json)</summary>"
                   f"<pre>{esc(json.dumps(cfg, indent=2, sort_keys=True, default=str))}</pre></details>")
        if diffs:
            items = "".join(f"<li>{esc(o)}: {esc(', '.join(k))}</li>" for o, k in diffs)
            out.append(f'<p class="note">Runs whose configuration differs from {esc(name)}\'s:</p><ul>{items}</ul>')
    return "\n".join(out)


# -- the report ----------------------------------------------------------------------------------------
def render_report(profile: str) -> str:
    """The report of ``profile`` as one HTML string (see :func:`write_report`)."""
    figs = paths.figures_dir(profile)
    if not figs.is_dir():
        raise ReportError(f"the figures folder {figs} does not exist: run "
                          f"`pneumo reproduce --profile {profile}` first (PNEUMO_HOME={paths.home()})")
    runs, markers = _read_runs(profile), read_markers(profile)
    t4_title, t4 = _section_table4(profile, figs)
    title = f"pneumolib report: profile {profile}"
    body = [
        f"<h1>{esc(title)}</h1>",
        _section_summary(profile, runs, markers, figs),
        "<h2>Figures 5-7</h2>", _section_figures(profile, figs, runs),
        f"<h2>{esc(t4_title)}</h2>", t4,
        "<h2>Studies</h2>", _section_studies(figs),
        "<h2>Provenance</h2>", _section_provenance(profile, runs),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{esc(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(profile: str, out: Path | str | None = None) -> Path:
    """Write the self-contained HTML report of ``profile`` and return its path.

    Args:
        profile: the profile whose ``figures/``, ``results/`` and ``papermill_runs/`` folders
            (under :func:`pneumolib.paths.home`) are reported.
        out: the HTML file to write; default ``figures/<profile>/report.html``.

    Raises:
        ReportError: ``figures/<profile>/`` does not exist (a FileNotFoundError and a
            PneumoError). Anything else missing is noted in the report instead.
    """
    text = render_report(profile)
    out = Path(out) if out is not None else paths.figures_dir(profile) / "report.html"
    return runio.atomic_write_text(out, text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pneumolib.reporting.report",
                                description="Write one self-contained HTML report of a profile's results.")
    p.add_argument("--profile", default="demo", help="profile to report (default: demo)")
    p.add_argument("--out", help="HTML file to write (default: figures/<profile>/report.html)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.profile, args.out)
    except PneumoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
