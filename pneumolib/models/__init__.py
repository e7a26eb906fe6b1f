"""Stage 3, models: the networks and how each scenario initialises them.

``unet`` (the paper's U-Net), ``resnet`` (smp's ResNet U-Net and its weights), ``parts``
(encoder freezing, parameter counts), ``scenarios`` (the six initialisations and the
extras), ``pretext`` (Models Genesis distortions for pretraining).
"""
