"""Per-scene normalisation: the fast percentile path gives numpy's values exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sitewatch.imagery.scenes.normalise import Normalisation, percentiles

QS = st.tuples(st.floats(0, 100), st.floats(0, 100))


@settings(max_examples=300, deadline=None)
@given(
    values=hnp.arrays(np.uint16, st.integers(1, 2000), elements=st.integers(0, 65535)),
    qs=QS,
    as_float=st.booleans(),
)
def test_integer_rasters_take_the_histogram_path_and_match_numpy(values, qs, as_float):
    v = values.astype(np.float32) if as_float else values
    assert np.array_equal(percentiles(v, qs), np.percentile(v, qs))


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 500),
                      elements=st.floats(-1e6, 1e6, width=32, allow_nan=False)),
    qs=QS,
)
def test_any_float_data_matches_numpy(values, qs):
    assert np.array_equal(percentiles(values, qs), np.percentile(values, qs))


def test_a_span_too_wide_for_a_histogram_still_matches_numpy():
    v = np.array([0, 5, 3_000_000, 7, 9], dtype=np.float64)
    assert np.array_equal(percentiles(v, (1.0, 99.0)), np.percentile(v, (1.0, 99.0)))


def test_scene_stats_are_numpys_percentiles_of_the_valid_pixels():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 12000, (4, 300, 200)).astype(np.float32)
    valid = rng.random((300, 200)) > 0.3
    lo, hi = Normalisation(low=1, high=99).scene_stats(data, valid)
    assert lo.dtype == hi.dtype == np.float32
    expect = np.percentile(data[:, valid], (1, 99), axis=1).astype(np.float32)
    assert np.array_equal(lo, expect[0]) and np.array_equal(hi, expect[1])
    lo_all, _ = Normalisation().scene_stats(data, np.ones((300, 200), bool))
    assert np.array_equal(lo_all, np.percentile(data.reshape(4, -1), 1, axis=1).astype(np.float32))


def test_signed_integers_wider_than_their_type_match_numpy():
    v = np.array([-30000, 30000, 5, -7, 29999], dtype=np.int16)
    assert np.array_equal(percentiles(v, (10.0, 90.0)), np.percentile(v, (10.0, 90.0)))
