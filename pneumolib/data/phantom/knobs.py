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
VERSION = 1

#: Share of positives of the real SIIM-ACR data (2,669 of 12,047).
PREVALENCE = 0.22

# -- pneumothorax size: lognormal area as a fraction of the image (DATA.md section 1) ------
#: median 8,630 px of 1024^2
AREA_MEDIAN = 8630 / 1024**2
#: log-space spread: puts the 5th percentile at ~1,360 px and the 10th at ~2,000 px
AREA_SIGMA = 1.12
#: clip range: the real minimum (55 px) and maximum (161,421 px) at 1024^2
AREA_MIN = 55 / 1024**2
AREA_MAX = 161421 / 1024**2

# -- pneumothorax conspicuity at d = 0 and how fast it fades with d ---------------------
#: extra air in the crescent, as a fraction of the lung's own air (darker than the lung)
PTX_DARKEN = 0.55
PTX_DARKEN_DECAY = 1.2
#: density of the visceral pleural line (a lung field is about 0.45 darker than soft tissue)
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
