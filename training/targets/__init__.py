"""What is learned per target kind: the kind's training rules (``kind_training``), the last layers
(``heads``), the losses (``losses``), the output transforms and the Regressor (``regressor``) and
the angle's output link (``angle_link``).
"""
