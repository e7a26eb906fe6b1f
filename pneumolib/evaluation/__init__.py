"""Stage 5, evaluation: uncertainty, image-level decisions, and trained runs put to use.

``uncertainty`` (bootstrap intervals, summaries over seeds), ``postprocess`` (the triplet,
the classifier gate), ``image_level`` (the image-level study), ``evaluate`` (re-scoring a
finished run), ``predictor`` (a run as a function from raw images to probabilities). The
metric definitions themselves are :mod:`pneumolib.metrics`, shared with training.
"""
