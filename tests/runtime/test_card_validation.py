"""Model card validation at the edges of each rule: the last valid value passes, the first invalid
one fails with a CardError naming the field."""

from __future__ import annotations

import pytest

from edgereg.card import ModelCard
from edgereg.errors import CardError

SCALAR = dict(kind="scalar", targets=("c",), input_size=(16, 16))


@pytest.mark.parametrize("bounds", [(5.0, 5.0), (0, 0), (-1.5, -1.5)])
def test_range_with_lo_equal_to_hi_is_rejected(bounds):
    # an empty range would make every reading "out_of_range" and divide by zero in the 1% tolerance
    with pytest.raises(CardError, match=r"'range' must be 1 \[lo, hi\] pairs with lo < hi"):
        ModelCard(**SCALAR, range=(bounds,))
    with pytest.raises(CardError, match="lo < hi"):
        ModelCard.from_dict(dict(SCALAR, range=[list(bounds)], format_version=1))


def test_range_with_lo_just_below_hi_is_accepted():
    card = ModelCard(**SCALAR, range=((5.0, 5.000001),))
    assert card.range == ((5.0, 5.000001),)
