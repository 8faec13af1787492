"""What an exported model says about its own readings: split-conformal intervals from held-out
images (``conformal``) and the novelty score of unfamiliar images (``novelty``, which rows fit and
set it: ``novelty_plan``).
"""
