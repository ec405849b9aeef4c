"""The closed forms: feasible, optimal, and never NaN or Inf."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_nudge.core.geometry import (
    gamma_to_theta,
    nudge_m,
    nudge_n,
    rotation,
    theta_to_gamma,
    unit_rows,
)

coords = st.integers(-4, 4)


@st.composite
def doc_and_pull(draw):
    """A unit document and a training sum: random, zero, parallel or antiparallel to it."""
    dim = draw(st.integers(1, 5))
    d = np.array(draw(st.lists(coords, min_size=dim, max_size=dim)), dtype=np.float64)
    if not d.any():
        d[0] = 1.0
    d /= np.linalg.norm(d)
    other = np.array(draw(st.lists(coords, min_size=dim, max_size=dim)), dtype=np.float64)
    a = draw(st.sampled_from([0.0, 1.0, -1.0, 2.5, -0.5]))
    b = draw(st.sampled_from([0.0, 1.0, 1e-9, 3.0]))
    g = a * d + b * other
    return d, g


def unit(g):
    n = np.linalg.norm(g)
    return g / n if n > 0 else g


@settings(max_examples=300, deadline=None)
@given(doc_and_pull(), st.floats(0.0, 5.0))
def test_nudge_m_is_feasible_and_beats_random_feasible_moves(pair, gamma):
    d, g = pair
    e = nudge_m(d[None], unit(g)[None], gamma)[0]
    assert np.all(np.isfinite(e))
    assert np.linalg.norm(e - d) <= gamma + 1e-12
    rng = np.random.default_rng(0)
    for _ in range(50):
        delta = rng.normal(size=d.shape)
        delta *= gamma * rng.uniform() / max(np.linalg.norm(delta), 1e-300)
        assert g @ e >= g @ (d + delta) - 1e-9


@settings(max_examples=300, deadline=None)
@given(doc_and_pull(), st.floats(0.0, 1.999))
def test_nudge_n_is_feasible_and_beats_random_feasible_moves(pair, gamma):
    d, g = pair
    e = nudge_n(d[None], unit(g)[None], gamma)[0]
    assert np.all(np.isfinite(e))
    assert abs(np.linalg.norm(e) - 1.0) < 1e-12
    assert np.sum((e - d) ** 2) <= gamma + 1e-12
    rng = np.random.default_rng(0)
    theta = gamma_to_theta(gamma)
    for _ in range(50):
        # A random feasible point: turn d toward a random unit vector, by at most theta.
        r = rng.normal(size=d.shape)
        r -= (r @ d) * d
        if np.linalg.norm(r) < 1e-12:
            other = d  # dimension 1: the only unit vectors are +-d, and only d is feasible
        else:
            r /= np.linalg.norm(r)
            t = rng.uniform(0, theta)
            other = np.cos(t) * d + np.sin(t) * r
        assert np.sum((other - d) ** 2) <= gamma + 1e-9
        assert g @ e >= g @ other - 1e-9


def test_nudge_n_turns_by_exactly_theta_until_it_reaches_g():
    d = np.array([[1.0, 0.0, 0.0]])
    g = np.array([[0.0, 1.0, 0.0]])
    for gamma in (0.1, 0.5, 1.0, 1.9):
        e = nudge_n(d, g, gamma)
        assert np.isclose(np.sum((e - d) ** 2), gamma)
    close = unit(np.array([1.0, 0.1, 0.0]))[None]
    assert np.allclose(nudge_n(d, close, 1.0), close)  # the angle to g is below theta: e = g


@pytest.mark.parametrize(
    "g", [[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1e-300, 0.0]]
)
def test_degenerate_pulls_never_give_nan(g):
    d = np.array([[1.0, 0.0, 0.0]])
    plane = rotation(d, unit(np.array(g))[None])
    assert np.all(np.isfinite(plane.tangent)) and np.all(np.isfinite(plane.angle))
    for gamma in (0.0, 0.3, 1.99):
        e = nudge_n(d, unit(np.array(g))[None], gamma)
        assert np.all(np.isfinite(e)) and np.isclose(np.linalg.norm(e), 1.0)


def test_antiparallel_pull_turns_a_fixed_way_and_by_theta():
    d = unit(np.array([1.0, 2.0, 3.0]))[None]
    e1 = nudge_n(d, -d, 0.5)
    e2 = nudge_n(d, -d, 0.5)
    assert np.array_equal(e1, e2)
    assert np.isclose(np.sum((e1 - d) ** 2), 0.5)


def test_dimension_one_antiparallel_stays_put():
    plane = rotation(np.array([[1.0]]), np.array([[-1.0]]))
    assert not plane.movable[0]
    assert np.array_equal(nudge_n(np.array([[1.0]]), np.array([[-1.0]]), 1.5), [[1.0]])


def test_unit_rows_handles_float32_extremes():
    x = np.array([[3.4e38, 3.4e38], [1e-45, 0.0], [0.0, 0.0], [-1e-38, 1e-38]], dtype=np.float32)
    u, ok = unit_rows(x)
    assert np.all(np.isfinite(u))
    assert ok.tolist() == [True, True, False, True]
    assert np.allclose(np.linalg.norm(u[ok], axis=1), 1.0)


@given(st.floats(0.0, 1.999))
def test_gamma_theta_round_trip(gamma):
    assert abs(theta_to_gamma(gamma_to_theta(gamma)) - gamma) < 1e-9
