"""The constants behind the phantom's look and its ``difficulty`` knob, in one place.

Every number the team may want to calibrate against the demo models lives here, named.
``for_difficulty(difficulty)`` turns the one float into the concrete settings :func:`render` uses.

How ``difficulty`` (``d >= 0``, default 1.0) acts:

* pneumothorax conspicuity falls as ``1 / (1 + DECAY * d)``: the extra darkening of the
  air space (``PTX_DARKEN``) and the brightness of the visceral pleural line
  (``PLEURA_LINE``);
* image noise grows linearly: ``NOISE_BASE * (1 + NOISE_GROWTH * d)``;
* each confounder (skin fold, ECG leads, lines and tubes, chest drain, the scapula's
  medial border over the lung) appears with probability ``1 - (1 - p1) ** d``, where ``p1``
  is its rate at ``d = 1`` (``CONFOUNDER_RATES``): none at ``d = 0``, nearly always as
  ``d`` grows; its strength scales as ``min(d, CONFOUNDER_MAX) ** 0.5``;
* ``d = 0`` is obvious: a dark, marking-free crescent with a bright pleural line, little
  noise, no confounders. The size distribution of the pneumothorax never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Bumped whenever the pictures change for the same (seed, index, size, difficulty).
#: 2: pneumothorax placement calibrated against the real SIIM-ACR masks (apical caps, more
#: on the patient's right, basal crescents; the lung collapses along rays to a point).
VERSION = 2

#: Share of positive images in SIIM-ACR, rounded: 2,669 of 12,047 in the paper's Table 1
#: (:data:`pneumolib.reporting.eda.PAPER_TABLE1`); the real table's own count is
#: ``pneumolib.data.annotations.summary()["prevalence"]``.
PREVALENCE = 0.22

# -- pneumothorax size: lognormal area as a fraction of the image (DATA.md section 1) ------
# The real quantiles these are fitted to come from pneumolib.data.annotations.summary()
# ("area_px", pixels at 1024^2); the phantom's against them: docs/DATA.md, demo/realism.
#: the real positives' median area, in pixels of 1024^2
AREA_MEDIAN = 8630 / 1024**2
#: log-space spread: chosen so the lognormal's 5th and 10th percentiles sit near the real ones
AREA_SIGMA = 1.12
#: clip range: the real minimum and maximum areas, in pixels of 1024^2
AREA_MIN = 55 / 1024**2
AREA_MAX = 161421 / 1024**2

# -- where the pneumothorax lies (calibrated against the real masks: pneumolib.reporting.realism) ----
# Tuned with realism.compare_phantom(1500, 256, seed=7) against the real masks; what these
# settings give is generated into docs/DATA.md (the realism summary).
#: share in the patient's right lung (the image's left half); real masks: most of the heat
PTX_RIGHT = 0.62
#: where the crescent's middle lies along the pleural surface, with relative frequencies
PTX_PLACES = {"apical": 0.7, "lateral": 0.15, "basal": 0.15}
#: the lung collapses towards this point: the hilum shifted by (lateral, down), normalised.
#: Apical caps collapse towards a point further down, so their lower edge is a meniscus.
COLLAPSE_SHIFT = {"apical": (0.04, 0.2), "lateral": (0.0, 0.0), "basal": (0.0, 0.0)}
#: the crescent's length along the surface, relative to the default for its area: apical
#: caps are shorter and deeper (the real heat map is concentrated over the apex)
PTX_LENGTH = {"apical": 0.7, "lateral": 1.0, "basal": 1.0}
#: the crescent's depth profile along its length, ``sin(pi * t) ** q``, q uniform in this
#: range: small q: blunt ends, large q: long thin tips
PTX_TAPER = {"apical": (0.7, 1.3), "lateral": (0.6, 1.2), "basal": (0.6, 1.2)}
#: apical: middle at the apex + normal(APICAL_SHIFT, APICAL_SD) * the crescent's length
#: (negative: towards the medial end of the apical cap)
APICAL_SHIFT = -0.15
APICAL_SD = 0.2
#: lateral: middle between apex (0) and costophrenic angle (1), uniform in this range
LATERAL_RANGE = (0.2, 0.9)
#: basal: middle between costophrenic angle (0) and cardiophrenic angle (1)
BASAL_RANGE = (-0.1, 0.4)

# -- pneumothorax conspicuity at d = 0 and how fast it fades with d ---------------------
#: extra air in the crescent, as a fraction of the lung's own air (darker than the lung)
PTX_DARKEN = 0.55
PTX_DARKEN_DECAY = 1.2
#: density of the visceral pleural line (same units as the lung's ``air``, see
#: :mod:`.anatomy`)
PLEURA_LINE = 0.16
PLEURA_DECAY = 1.0
#: per-image spread of both (multiplied by a uniform draw in this range)
PTX_JITTER = (0.6, 1.4)

# -- noise ------------------------------------------------------------------------------
#: std of the quantum-like noise on a [0, 1] image at d = 0
NOISE_BASE = 0.012
NOISE_GROWTH = 1.0

# -- confounders: probability at d = 1 ----------------------------------------------------
CONFOUNDER_RATES = {
    "skin_fold": 0.35,
    "ecg_leads": 0.45,
    "central_line": 0.20,
    "et_tube": 0.15,
    "ng_tube": 0.12,
    "chest_drain": 0.10,
    "scapula_over_lung": 0.45,
}
#: confounder strength saturates here
CONFOUNDER_MAX = 3.0


@dataclass(frozen=True)
class Knobs:
    """Concrete settings for one difficulty (see the module docstring)."""

    difficulty: float
    ptx_darken: float
    pleura_line: float
    noise: float
    confounder_p: dict
    confounder_strength: float


def for_difficulty(difficulty: float) -> Knobs:
    """Settings of :func:`pneumolib.data.phantom.render` for ``difficulty >= 0``."""
    d = float(difficulty)
    if not math.isfinite(d) or d < 0:
        from pneumolib.errors import ConfigError

        raise ConfigError(f"phantom difficulty={difficulty!r} must be a finite number >= 0")
    return Knobs(
        difficulty=d,
        ptx_darken=PTX_DARKEN / (1.0 + PTX_DARKEN_DECAY * d),
        pleura_line=PLEURA_LINE / (1.0 + PLEURA_DECAY * d),
        noise=NOISE_BASE * (1.0 + NOISE_GROWTH * d),
        confounder_p={k: 1.0 - (1.0 - p) ** d for k, p in CONFOUNDER_RATES.items()},
        confounder_strength=min(d, CONFOUNDER_MAX) ** 0.5,
    )
