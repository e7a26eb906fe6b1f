"""pneumolib: the library behind the pneumothorax segmentation compendium.

Notebooks in ``notebooks/`` tell the story; this package does the work. Modules have one
job each: ``paths`` (where things live), ``config`` (typed profiles), ``rle`` (the
competition's run-length codec), ``imageio`` (decoding any image file to grayscale),
``data`` (reading the dataset layouts), ``phantom`` (the built-in synthetic data),
``prep`` / ``splits`` / ``cache`` / ``datamodule`` (the paper's preparation and fast
loading), ``models`` / ``scenarios`` (the U-Nets and the six initialisations), ``metrics``
(every number), ``train`` (Lightning), ``plots`` and ``cli``.
"""

__version__ = "0.1.0"
