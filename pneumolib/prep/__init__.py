"""Stage 2, preparation: what the paper did to the images before training.

``augment`` (resizing, the offline flip / rotation, normalisation statistics), ``splits``
(the ``paper`` and ``clean`` protocols), ``cache`` (resized uint8 memmaps and the
materialised items of a split), ``transforms`` (online albumentations augmentation) and
``datamodule`` (the LightningDataModule that serves the batches).
"""
