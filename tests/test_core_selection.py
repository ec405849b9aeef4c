"""Gamma selection is exact: it matches brute force over every region of the objective."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import bisect_root, plain_metric, plain_query_sums
from strategies import objectives, problems

from stream_nudge.core.geometry import (
    Rotation,
    gamma_to_theta,
    nudge_n,
    rotation,
    theta_to_gamma,
    unit_rows,
)
from stream_nudge.core.objectives import parse_objective
from stream_nudge.core.selection import ValidationScores, objective_at, select_gamma

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unit64(x):
    return unit_rows(x, out=np.empty(x.shape))[0]


class Model:
    """One small problem in float64, with every score computed once from shared matrices.

    The selector and the oracles read the same numbers, so that what is compared is the search
    for the best gamma, not the last bit of two different float evaluations of one dot product.
    (That the score model equals the dot product with the nudged embeddings is checked in
    test_score_model_is_the_dot_product_with_the_nudged_embeddings.)
    """

    def __init__(self, problem, method, k):
        docs, train, train_ans, val, val_ans = problem
        self.method = method
        d = unit64(docs)
        g_all = unit64(plain_query_sums(len(d), d.shape[1], train, train_ans))
        nudged = np.flatnonzero(np.abs(g_all).sum(axis=1) > 0)
        n, dim = d.shape
        self.angle = np.zeros(n)
        tangent = np.zeros((n, dim))
        if method == "nudge-n":
            plane = rotation(d[nudged], g_all[nudged])
            nudged = nudged[plane.movable]
            self.angle[nudged] = plane.angle[plane.movable]
            tangent[nudged] = plane.tangent[plane.movable]
            self.plane = Rotation(tangent[nudged], self.angle[nudged], np.ones(len(nudged), bool))
        self.d, self.nudged = d, nudged
        self.g = np.zeros_like(d)
        self.g[nudged] = g_all[nudged]
        self.v = unit64(val)
        self.answers = [sorted(set(a)) for a in val_ans]
        self.c = self.v @ d.T
        self.m = self.v @ self.g.T
        self.b = self.v @ tangent.T
        self.is_nudged = np.zeros(n, bool)
        self.is_nudged[nudged] = True
        self.scores = self._validation_scores(k)

    def _validation_scores(self, k):
        nq = len(self.v)
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in self.answers])]).astype(np.int64)
        rows = np.array([x for a in self.answers for x in a], dtype=np.int64)
        col_of = np.full(len(self.d), -1)
        col_of[self.nudged] = np.arange(len(self.nudged))
        others = np.full((nq, k), -np.inf)
        for q in range(nq):
            pool = sorted(
                (
                    self.c[q, j]
                    for j in range(len(self.d))
                    if not self.is_nudged[j] and j not in self.answers[q]
                ),
                reverse=True,
            )[:k]
            others[q, : len(pool)] = pool
        pair_q = np.repeat(np.arange(nq), np.diff(ptr))
        return ValidationScores(
            sims=self.c[:, self.nudged],
            pulls=self.m[:, self.nudged],
            answer_ptr=ptr,
            answer_cols=col_of[rows],
            answer_static=self.c[pair_q, rows],
            others=others,
            tangents=self.b[:, self.nudged] if self.method == "nudge-n" else None,
            angles=self.angle[self.nudged] if self.method == "nudge-n" else None,
        )

    def table(self, gamma):
        """Scores of every query against every document at ``gamma``."""
        if self.method == "nudge-m":
            return self.c + gamma * self.m
        theta = float(gamma_to_theta(gamma))
        turning = self.c * np.cos(theta) + self.b * np.sin(theta)
        moved = np.where(theta < self.angle, turning, self.m)
        return np.where(self.is_nudged, moved, self.c)

    def plain(self, gamma, obj):
        # Rounded to 1e-9: the lattice makes many scores equal in exact arithmetic, and float
        # evaluation leaves them 1e-16 apart; rounding makes them the ties they are.
        t = np.round(self.table(gamma), 9)
        values = [plain_metric(t[q], a, obj.kind, obj.k) for q, a in enumerate(self.answers)]
        return float(np.mean(values)) if values else 0.0

    def embeddings(self, gamma):
        if self.method == "nudge-m":
            return self.d + gamma * self.g
        e = self.d.copy()
        if len(self.nudged):
            e[self.nudged] = nudge_n(self.d[self.nudged], self.g[self.nudged], gamma, self.plane)
        return e


def line_crossings(model):
    """Every gamma > 0 where two documents' lines cross for some query."""
    c, m = model.c, model.m
    points = []
    for q in range(len(c)):
        for i in range(c.shape[1]):
            for j in range(i + 1, c.shape[1]):
                if abs(m[q, i] - m[q, j]) > 1e-12:
                    t = (c[q, j] - c[q, i]) / (m[q, i] - m[q, j])
                    if t > 0:
                        points.append(t)
    return np.unique(points)


def dense_candidates(points, last):
    """The region boundaries, every midpoint between them, and points past the last one."""
    points = np.unique(np.concatenate([[0.0], points]))
    mids = 0.5 * (points[1:] + points[:-1])
    tail = [1.5 * points[-1] + last, 2.0 * points[-1] + last] if np.isfinite(last) else []
    return np.unique(np.concatenate([points, mids, tail]))


@SETTINGS
@given(problems(), objectives)
def test_nudge_m_gamma_is_the_brute_force_best(problem, objective):
    obj = parse_objective(objective)
    model = Model(problem, "nudge-m", obj.k)
    sel = select_gamma(model.scores, obj, "nudge-m")
    candidates = dense_candidates(line_crossings(model), 1.0)
    grid = np.array([model.plain(x, obj) for x in candidates])
    chosen = model.plain(sel.gamma, obj)
    assert abs(chosen - grid.max()) < 1e-12
    assert abs(sel.value - chosen) < 1e-12
    # Where 0 is among the best, the choice is 0 (do no harm); otherwise ties go to the
    # smaller gamma: nothing before the chosen region scores as well.
    if model.plain(0.0, obj) >= grid.max() - 1e-12:
        assert sel.gamma == 0.0
    else:
        first_best = candidates[np.flatnonzero(grid >= grid.max() - 1e-12)[0]]
        assert first_best >= sel.low or abs(first_best - sel.low) < 1e-12


def curve_crossings(model, upper):
    """Every theta in (0, upper) where two documents' NUDGE-N scores cross, found numerically."""
    thetas = np.linspace(0.0, upper, 1201)
    tables = np.stack([model.table(theta_to_gamma(t)) for t in thetas])
    points = list(model.angle[model.nudged][model.angle[model.nudged] < upper])
    n = tables.shape[2]
    for q in range(tables.shape[1]):
        for i in range(n):
            for j in range(i + 1, n):
                diff = tables[:, q, i] - tables[:, q, j]
                sign = diff >= 0
                for s in np.flatnonzero(sign[1:] != sign[:-1]):

                    def f(t, q=q, i=i, j=j):
                        row = model.table(theta_to_gamma(t))[q]
                        return row[i] - row[j]

                    points.append(bisect_root(f, thetas[s], thetas[s + 1]))
    return np.unique(points)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_docs=5, max_dim=3, max_val=3), objectives)
def test_nudge_n_gamma_is_the_brute_force_best(problem, objective):
    obj = parse_objective(objective)
    model = Model(problem, "nudge-n", obj.k)
    sel = select_gamma(model.scores, obj, "nudge-n")
    upper = np.pi / 2
    thetas = dense_candidates(curve_crossings(model, upper), np.inf)
    thetas = np.unique(np.concatenate([thetas, [0.5 * (thetas[-1] + upper)]]))
    grid = np.array([model.plain(theta_to_gamma(t), obj) for t in thetas])
    chosen = model.plain(sel.gamma, obj)
    assert abs(chosen - grid.max()) < 1e-12
    assert abs(sel.value - chosen) < 1e-12
    assert 0.0 <= sel.gamma < 2.0
    # Where 0 is among the best, the choice is 0 (do no harm).
    assert (sel.gamma == 0.0) == (model.plain(0.0, obj) >= grid.max() - 1e-12)


# The oracle resolves scores to 1e-9 (see Model.plain): gammas below 1e-6 would move documents by
# less than that and ask it to see what it rounds away.
gammas = st.one_of(st.just(0.0), st.floats(1e-6, 1.9))


@SETTINGS
@given(problems(), objectives, st.sampled_from(["nudge-m", "nudge-n"]), gammas)
def test_direct_evaluation_matches_the_plain_metric(problem, objective, method, gamma):
    obj = parse_objective(objective)
    model = Model(problem, method, obj.k)
    assert abs(objective_at(model.scores, obj, method, gamma) - model.plain(gamma, obj)) < 1e-12


@SETTINGS
@given(problems(), st.sampled_from(["nudge-m", "nudge-n"]), st.floats(0.0, 1.9))
def test_score_model_is_the_dot_product_with_the_nudged_embeddings(problem, method, gamma):
    model = Model(problem, method, 1)
    np.testing.assert_allclose(model.table(gamma), model.v @ model.embeddings(gamma).T, atol=1e-12)


@SETTINGS
@given(problems(max_val=6), objectives)
def test_nudge_n_beats_the_reference_grid(problem, objective):
    obj = parse_objective(objective)
    model = Model(problem, "nudge-n", obj.k)
    sel = select_gamma(model.scores, obj, "nudge-n")
    grid = [model.plain(0.02 * i, obj) for i in range(25)]
    assert model.plain(sel.gamma, obj) >= max(grid) - 1e-12


def test_max_gamma_bounds_the_search():
    rng = np.random.default_rng(3)
    docs = rng.normal(size=(40, 8))
    problem = (
        docs,
        rng.normal(size=(30, 8)),
        [[i] for i in range(30)],
        rng.normal(size=(10, 8)),
        [[i] for i in range(10)],
    )
    obj = parse_objective("hit@1")
    for method in ("nudge-m", "nudge-n"):
        model = Model(problem, method, 1)
        sel = select_gamma(model.scores, obj, method, max_gamma=0.05)
        assert 0.0 <= sel.gamma <= 0.05
