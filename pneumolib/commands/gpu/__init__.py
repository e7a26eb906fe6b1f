"""``pneumo bench --gpu``: the prepared GPU check, one JSON within a time budget.

Modules: ``budget`` (constants, peaks, the time budget and each part's share of it, timing
windows, the projection), ``measure`` (speed rows on the GPU), ``children`` (each part in a
worker thread with a deadline; the compile and training subprocesses), ``advice``
(recommended switch values, the projection of a result), ``check`` (the whole check; its
docstring gives the shares and the worst case), ``command`` (the CLI entry, its refusal
without CUDA and the summary table).

What it measures, in priority order. Each part gets its own share of the budget, decided
up front, and is stopped at its deadline; a part that cannot run or runs past its share is
recorded as ``not measured: <why>`` and the next part still gets its share, so the JSON is
always written within the budget:

1. ``core``: training and evaluation speed of the paper U-Net (base width 64, ``norm="none"``,
   as the ``paper`` profile) and the smp ResNet-50 U-Net (random weights) at 512 px, batch 32,
   in ``16-mixed`` (the paper's fp16 and the CUDA default), channels-last off.
2. ``epoch``: one short real training run of the ``paper`` profile (``pneumo train --scenario
   random --profile paper``, a subprocess, all visible GPUs) on a 512 px phantom written in
   the ``siim-dicom`` layout (``pneumo data phantom --layout siim-dicom``): images/s of whole
   epochs, data loading, Lightning and the per-epoch val + test evaluation included.
3. ``rows``: channels-last on, and ``bf16-mixed`` off and on.
4. ``epoch_1gpu`` (only with several GPUs visible): the same epoch on one GPU, which makes
   the multi-GPU speed-up a measured number.
5. for the U-Net (7 of the profile's 8 runs), at the recommended precision / memory format:
   ``cudnn``, ``torch.backends.cudnn.benchmark`` off and on, back to back; and ``compile``,
   ``model.compile()`` in a subprocess killed at the end of its share (compiling can take a
   minute; not started with less than ``Settings.compile_min_s`` left, nor without a C
   compiler, which torch.compile needs).
6. ``rows`` of ``32-true`` (the numerical reference), then 5 for the ResNet-50.

Every speed row: training images/s (steady state: warm-up steps first, then timed windows
with CUDA synchronised only at the two ends of each window; the best of the windows), peak
GPU memory (``torch.cuda.max_memory_allocated``, reset per measurement), achieved TFLOP/s
(FLOPs of one training step by ``torch.utils.flop_counter.FlopCounterMode``: convolutions
and matrix products, forward + backward) as a fraction of the card's dense peak for the
precision's tensor-core kind (:data:`GPU_PEAKS_TFLOPS`), and no-grad evaluation images/s.
Out of memory is a recorded row, not a crash.

Then the projected wall time of the whole ``paper`` profile (:func:`project_paper`) and the
``recommendations`` for the GPU switches of :class:`pneumolib.config.Config`
(:func:`recommend`). On a machine without CUDA, :func:`main` refuses with exit status 2 and
writes nothing.
"""

