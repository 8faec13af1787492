"""The model registry and every registered model (importing this package registers them).

``create_model(name, *, n_outputs, kind, in_channels, input_size, **options)`` builds one;
``list_models()`` names them; ``default_model(kind)`` picks the trainer's default.
"""

# Registration order is the order of `edgereg models`: edgereg's own models, then the baselines.
from edgereg.training.models import cnn, heatmap, hybrid, mlp, mobilenet, msd, p4m, readout, resnet, seeds  # noqa: F401
from edgereg.training.models.registry import (
    ModelEntry,
    count_parameters,
    create_model,
    default_model,
    list_models,
    model_entry,
    register_model,
)

__all__ = [
    "ModelEntry",
    "count_parameters",
    "create_model",
    "default_model",
    "list_models",
    "model_entry",
    "register_model",
]
