"""Stage 4, training: Lightning's module and Trainer, the run folders, the launcher.

``losses``, ``module`` (the LightningModule), ``trainer`` (Trainer, ``fit``, per-epoch
CSV), ``runs`` (``pretrain`` / ``train_scenario``, the copy-through measurement) and
``launch`` (the same training in a child process, for notebooks that need several).
"""
