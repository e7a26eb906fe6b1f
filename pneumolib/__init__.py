"""pneumolib: the library behind the pneumothorax segmentation compendium.

Notebooks in ``notebooks/`` tell the story; this package does the work. Its subpackages
are the pipeline's stages, in the order the data flows: ``data`` (reading the dataset
layouts and the built-in phantom), ``prep`` (the paper's preparation, splits, cache,
batches), ``models`` (the U-Nets and the six initialisations), ``training`` (Lightning),
``evaluation`` (intervals, image-level decisions, predictors), ``reporting`` (tables,
figures, studies, the HTML report) and ``commands`` (what ``pneumo`` runs; ``cli`` parses
it). ``config``, ``paths``, ``errors``, ``seeding``, ``runio`` and ``metrics`` are shared by
all of them. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
