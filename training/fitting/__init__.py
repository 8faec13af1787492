"""The optimisation of one planned fit: the epoch loop (``fit``), the numeric format and layout of a
step (``step``), the learning-rate schedule (``schedule``) and the augmentation (``augment``, its
geometric maps ``warp``).
"""
