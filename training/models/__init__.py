"""The model registry and every registered model (importing this package registers them).

``create_model(name, *, n_outputs, kind, in_channels, input_size, **options)`` builds one;
``list_models()`` names them; ``default_model(kind)`` picks the trainer's default.
"""

from edgereg.training.models.registry import (
    ModelEntry,
    count_parameters,
    create_model,
    default_model,
    list_models,
    model_entry,
    register_model,
)

# Registration order is the order of `edgereg models`: edgereg's own models, then the baselines.
from edgereg.training.models import cnn, resnet, mobilenet, msd, heatmap, p4m, mlp, seeds, readout, hybrid  # noqa: E402,F401,E501

__all__ = [
    "ModelEntry",
    "count_parameters",
    "create_model",
    "default_model",
    "list_models",
    "model_entry",
    "register_model",
]
