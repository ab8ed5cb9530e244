"""Strategies and settings shared by the property tests."""

from __future__ import annotations

import itertools
import os
import string

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["checks", "chunks_of", "header_values", "tokens"]

#: No deadline (a test's speed is not its result) and no example database written
#: into the checkout; a failure prints the blob that reproduces it. 100 examples per
#: test; ``GEVENTWS_PROPERTY_EXAMPLES=5000`` searches longer.
checks = settings(
    deadline=None,
    database=None,
    print_blob=True,
    max_examples=int(os.environ.get("GEVENTWS_PROPERTY_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=20)
# A field value as HTTP carries it: visible ASCII and obs-text, inner spaces and tabs.
_visible = st.characters(codec="latin-1", exclude_categories=("Cc",)).filter(
    lambda c: c not in " \x7f"
)
header_values = st.one_of(
    st.just(""),
    st.text(_visible, min_size=1, max_size=1),
    st.builds(
        lambda first, middle, last: first + middle + last,
        st.text(_visible, min_size=1, max_size=1),
        st.text(st.one_of(_visible, st.sampled_from(" \t")), max_size=30),
        st.text(_visible, min_size=1, max_size=1),
    ),
)


@st.composite
def chunks_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
