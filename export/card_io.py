"""Write the model card into an ONNX model's ``metadata_props`` (needs the ``onnx`` package)."""

from __future__ import annotations

from pathlib import Path

from edgereg.core.card import CARD_KEY, ModelCard
from edgereg.errors import require_extra


def embed_card(model, card: ModelCard):
    """Set (or replace) the card in ``model.metadata_props``; returns the same ModelProto."""
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key=CARD_KEY, value=card.to_json())
    return model


def write_card(path: str | Path, card: ModelCard) -> None:
    """Rewrite the ONNX file at ``path`` with ``card`` embedded (atomic replace)."""
    copy_with_card(path, path, card)


def copy_with_card(src: str | Path, dst: str | Path, card: ModelCard) -> Path:
    """Write the model at ``src`` to ``dst`` with ``card`` embedded (atomic; ``src`` is left as it is,
    and ``dst`` may be ``src``).

    Raises:
        OutputError: ``dst`` cannot be written (missing folder, a folder in the way, read-only).
    """
    from edgereg.files import atomic_write

    onnx = require_extra("onnx")
    model = onnx.load(str(src))
    embed_card(model, card)
    return atomic_write(dst, model.SerializeToString())
