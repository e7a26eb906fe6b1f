"""Phantom chest radiographs: the built-in data, in the real data's ``siim-png`` layout
(default) or the competition download's ``siim-dicom`` layout (JPEG Baseline DICOMs and
``train-rle.csv``; :mod:`pneumolib.data.phantom.dicom`).

Each image is a synthetic PA or AP chest film: soft tissue and shoulders, two lung fields
with branching vessel markings that thin towards the periphery, posterior and anterior
ribs, clavicles, scapulae, the cardiomediastinal silhouette (left-shifted heart, aortic
knob), diaphragm domes, a gastric bubble, breast shadows, exposure / contrast / gamma /
noise varying between films, AP looks (wider heart, higher tilted clavicles, scapulae over
the lungs, magnification, "AP PORTABLE"), occasional small rotation and shift.

About 22 % carry a pneumothorax, drawn as it forms: a crescent of pleural air between the
chest wall and the retracted lung edge (mostly an apical cap, else lateral or basal; more
often on the patient's right, placed to match the real masks' location heat map, see
:mod:`pneumolib.reporting.realism`), free of lung markings, darker than the lung, bounded by a thin
bright visceral pleural line. The mask is the crescent. Areas follow SIIM-ACR (median about 0.8 % of the image, 5th percentile about
0.13 %, 10 % of positives under 0.19 %; capped near 10 % by the size of one lung). Confounders that mimic a pleural line (skin folds, the
scapula's edge, ECG leads, lines, tubes, chest drains) appear regardless of the label.

``difficulty`` (``>= 0``, default 1.0; 0 is obvious) lowers the crescent's extra darkness
and the pleural line as ``1 / (1 + c * d)``, raises the noise linearly and makes the
confounders more frequent (``1 - (1 - p1) ** d``) and stronger (``sqrt(d)``); every
constant is named in :mod:`pneumolib.data.phantom.knobs`.

API::

    render(index, seed=0, size=512, difficulty=1.0, *, positive=None, layers=False)
        -> (image uint8 (S, S), mask bool (S, S), meta dict)
    write_phantom(out, n, size, seed=0, difficulty=1.0, prevalence=0.22, workers=None,
                  progress=True, overwrite=False, layout="siim-png", junk=0) -> Path
                  # layout: "siim-png" | "siim-dicom"; junk: siim-dicom's macOS ._ files
    ensure_phantom(cfg) -> Path      # siim-png, cached under paths.cache_dir()/phantom/<key>/

A reader recognises a phantom set by its ``PHANTOM.json`` (:func:`read_marker`).
"""

from . import knobs
from .compose import render
from .knobs import PREVALENCE, VERSION
from .writer import LAYOUTS, MARKER, cache_key, ensure_phantom, is_complete, plan, read_marker, write_phantom

__all__ = [
    "LAYOUTS", "MARKER", "PREVALENCE", "VERSION", "cache_key", "ensure_phantom", "is_complete", "knobs", "plan",
    "read_marker", "render", "write_phantom",
]
