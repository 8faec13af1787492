"""Reading one lab section of a model card (``calibration``, ``validation``, ``intervals``).

The three sections share their structure, so they share their reader (:func:`read_section`):

* missing or empty (``{}``, ``None``) -> None: the model simply has no such information;
* not a JSON object -> :class:`~edgereg.errors.CardError` naming the section and the fix;
* a field missing or of the wrong type anywhere inside (``KeyError``, ``TypeError``,
  ``ValueError``, ``AttributeError``, ``IndexError`` from the section's parser) -> ``CardError``
  ``field 'NAME': malformed (KeyError: 'id'); FIX``;
* a value the parser refuses itself: the parser raises ``bad("what")``, the same one-line form.

numpy-free and cheap to import: reading a card parses these sections (``edgereg.core.card``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from edgereg.errors import CardError

T = TypeVar("T")
Bad = Callable[[str], CardError]  # what -> the section's CardError (one line, with the fix)

# what a parser raises on a field that is missing or of the wrong type
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def section_error(name: str, fix: str) -> Bad:
    """``bad(what)`` for section ``name``: ``CardError("field 'NAME': WHAT; FIX")``."""
    def bad(what: str) -> CardError:
        return CardError(f"field '{name}': {what}; {fix}")
    return bad


def read_section(data: Any, *, name: str, fix: str, parse: Callable[[Mapping[str, Any], Bad], T]) -> T | None:
    """Parse card section ``name`` with ``parse(data, bad)``; None when the section is empty.

    Args:
        data: the section as stored in the card (a JSON object, or empty).
        name: the card field, e.g. ``"calibration"``.
        fix: the command that writes the section again, for the messages.
        parse: builds the parsed section; raises ``bad(what)`` for a value it refuses.

    Raises:
        CardError: the section is not an object, or is malformed (one line naming ``name`` and ``fix``).
    """
    if not data:
        return None
    bad = section_error(name, fix)
    if not isinstance(data, Mapping):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    try:
        return parse(data, bad)
    except CardError:
        raise
    except MALFORMED as exc:
        raise bad(f"malformed ({type(exc).__name__}: {exc})") from None


__all__ = ["MALFORMED", "read_section", "section_error"]
