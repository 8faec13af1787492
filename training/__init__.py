"""``edgereg.training`` (PyTorch): a labelled image folder -> a trained run folder.

Packages: ``planning`` (what is fixed before the first step: probe, geometry, input size, loading,
splits, validation design, normalization, reference, the fit plan), ``selection`` (the race of
models and learning rates, ``--lr auto``, the LR finder), ``fitting`` (the epoch loop, the step's
numeric format, the schedule, augmentation), ``targets`` (per-kind heads, losses and output
transforms), ``reporting`` (metrics.json, run.json, plots, out-of-fold predictions), ``models``
(the registry of networks), ``blocks`` (fixed feature blocks and their readouts). Modules:
``trainer`` (the orchestration of ``edgereg train``), ``config``, ``run`` (the run folder), ``budget``,
``kernel_flags``, ``synth`` (synthetic datasets), ``ddp`` (``torchrun``).
"""
