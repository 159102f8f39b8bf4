"""Values of every JSON-ish type and odd range, for tests that an API refuses what it cannot take."""

from __future__ import annotations

from hypothesis import strategies as st

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
"""None, booleans, huge and negative integers, NaN and infinities, short texts, lists, dicts."""
