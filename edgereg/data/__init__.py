"""Labelled data, torch-free: what training, ``edgereg eval``, the export gate and the lab commands share.

Modules: ``dataset`` (labels.csv and its images loaded into memory, preprocessed as the runtime sees
them, with the disk cache and the kind inference), ``metrics`` (errors in the user's units per target
kind) and ``kinds`` (what the dataset and the metrics do per kind). numpy and OpenCV only.
"""
