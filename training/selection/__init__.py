"""Choosing what is fitted: the race of models and learning rates on validation (``race``), the
choices built on it (``model_choice``: ``--lr auto``, the race, the block readouts, the hybrid) and
the learning-rate range test (``lr_find``).
"""
