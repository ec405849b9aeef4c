"""The closed forms of NUDGE-M and NUDGE-N, and the safe vector arithmetic under them.

Every function here is pure numpy, never returns NaN or Inf for finite input, and never writes into
its arguments.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Rotation",
    "gamma_to_theta",
    "nudge_m",
    "nudge_n",
    "rotation",
    "theta_to_gamma",
    "turnable",
    "unit_rows",
]

# Rows are normalised in blocks so that the float64 working copy stays small next to a large corpus.
_BLOCK_ROWS = 16384

# Between these magnitudes float32 squares and their sums stay normal numbers (float32 runs from
# 1e-38 to 3e38, and 384 squares of 1e18 sum to 4e38 ... safely below with 1e17), so a float32 row
# can be normalised without widening it.
_SAFE_LOW, _SAFE_HIGH = 1e-17, 1e17

# Below this |g - (g.d) d| the unit tangent is recomputed from a fixed axis: G is (anti)parallel to d
# up to rounding, and dividing by a near-zero norm would amplify rounding into direction.
_TANGENT_EPS = 1e-12


def unit_rows(x: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise the rows of ``x``; zero rows stay zero.

    Works in float64 after dividing each row by its largest magnitude, so float32 extremes
    (1e38, denormals) neither overflow nor underflow.

    Returns
    -------
    (unit, nonzero)
        ``unit`` has the dtype of ``out`` (float32 when ``out`` is None); ``nonzero`` flags rows
        whose norm was positive.

    Examples
    --------
    >>> u, ok = unit_rows(np.array([[1.5e38, 2e38], [0.0, 0.0]], dtype=np.float32))
    >>> u.tolist(), ok.tolist()
    ([[0.6000000238418579, 0.800000011920929], [0.0, 0.0]], [True, False])
    """
    x = np.asarray(x)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    nonzero = np.zeros(x.shape[0], dtype=bool)
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, x.shape[0])
        block = x[start:stop]
        peak = np.abs(block).max(initial=0.0)
        if block.dtype == np.float32 and out.dtype == np.float32 and _SAFE_LOW < peak < _SAFE_HIGH:
            # Squares neither overflow nor vanish: float32 all the way, as fast as a copy.
            # np.linalg.norm sums squares pairwise: float32 norms good to a few ulps.
            norm = np.linalg.norm(block, axis=1)
            ok = norm > 0
            np.divide(block, np.where(ok, norm, 1.0)[:, None], out=out[start:stop])
        else:
            wide = np.asarray(block, dtype=np.float64)
            scale = np.abs(wide).max(axis=1, initial=0.0)
            ok = scale > 0
            wide = wide / np.where(ok, scale, 1.0)[:, None]
            norm = np.sqrt(np.einsum("ij,ij->i", wide, wide))
            out[start:stop] = wide / np.where(ok, norm, 1.0)[:, None]
        nonzero[start:stop] = ok
    return out, nonzero


def gamma_to_theta(gamma: float | np.ndarray) -> float | np.ndarray:
    """NUDGE-N's angle: ``|e - d|^2 <= gamma`` for unit ``e, d`` means ``cos(theta) = 1 - gamma/2``."""
    return np.arccos(np.clip(1.0 - np.asarray(gamma, dtype=np.float64) / 2.0, -1.0, 1.0))


def theta_to_gamma(theta: float | np.ndarray) -> float | np.ndarray:
    """Inverse of :func:`gamma_to_theta`, written ``4 sin^2(theta/2)`` to keep small angles exact."""
    return 4.0 * np.sin(np.asarray(theta, dtype=np.float64) / 2.0) ** 2


def nudge_m(docs: np.ndarray, directions: np.ndarray, gamma: float) -> np.ndarray:
    """NUDGE-M: ``e = d + gamma * g`` for unit directions ``g`` (zero rows leave ``d`` unchanged).

    The result is not unit-norm: search it with the dot product.

    >>> nudge_m(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 0.5).tolist()
    [[1.0, 0.5]]
    """
    return np.asarray(docs, dtype=np.float64) + float(gamma) * np.asarray(directions, np.float64)


class Rotation:
    """Where each document may turn under NUDGE-N: the plane of ``d`` and ``g``.

    Attributes
    ----------
    tangent : float64 [n, dim]
        Unit vector orthogonal to ``d`` in the plane of ``d`` and ``g``; the turn is
        ``cos(t) d + sin(t) tangent``.
    angle : float64 [n]
        The angle phi between ``d`` and ``g``; a turn of ``phi`` or more ends at ``g`` itself.
    movable : bool [n]
        False where no turn is possible: ``g`` is zero, or ``dim == 1`` and ``g = -d``.
    """

    def __init__(self, tangent: np.ndarray, angle: np.ndarray, movable: np.ndarray):
        self.tangent = tangent
        self.angle = angle
        self.movable = movable


def turnable(docs: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Rows NUDGE-N can turn: a non-zero ``g``, and not ``g = -d`` in one dimension.

    In one dimension the only unit vectors are +-d, so a document pulled to its opposite has no
    way to turn within ``|delta|^2 < 2``; it stays put. Only signs matter, so ``docs`` need not be
    normalised.
    """
    d = np.asarray(docs, dtype=np.float64)
    g = np.asarray(directions, dtype=np.float64)
    has_g = np.any(g != 0.0, axis=1)
    if d.shape[1] != 1:
        return has_g
    return has_g & (np.sign(d[:, 0]) == np.sign(g[:, 0]))


def rotation(docs: np.ndarray, directions: np.ndarray) -> Rotation:
    """The rotation plane of unit ``docs`` toward unit ``directions`` (rows of zeros: no move).

    Guards the degenerate cases: ``g`` parallel to ``d`` gives ``angle = 0`` (the document is
    already where it would go); ``g = -d`` has no unique plane, so the tangent is taken from the
    coordinate axis on which ``d`` is smallest, a fixed and reproducible choice that still attains
    the optimum (every tangent is equally good there).
    """
    d = np.asarray(docs, dtype=np.float64)
    g = np.asarray(directions, dtype=np.float64)
    _n, dim = d.shape
    cos = np.clip(np.einsum("ij,ij->i", d, g), -1.0, 1.0)
    w = g - cos[:, None] * d
    sin = np.sqrt(np.einsum("ij,ij->i", w, w))
    has_g = np.einsum("ij,ij->i", g, g) > 0
    regular = has_g & (sin > _TANGENT_EPS)
    if regular.all():
        # The usual case: one division instead of masked copies in and out.
        tangent = w / sin[:, None]
    else:
        tangent = np.zeros_like(d)
        tangent[regular] = w[regular] / sin[regular, None]
    # When g is nearly (anti)parallel to d, w is a small difference of large terms and keeps a
    # rounding-sized component along d; a second Gram-Schmidt step removes it, so that the turn
    # stays on the sphere and within the constraint to the last bits.
    along = np.einsum("ij,ij->i", tangent, d)
    tangent -= along[:, None] * d
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1), np.finfo(np.float64).tiny)[:, None]
    # Nearly (anti)parallel: recompute the tangent from an axis; for g ~ +d the angle is ~0 and the
    # document saturates at g at once, so the tangent hardly matters, but it must be a unit vector.
    degenerate = np.flatnonzero(has_g & ~regular)
    movable = turnable(d, g)
    if degenerate.size and dim > 1:
        rows = d[degenerate]
        axis = np.argmin(np.abs(rows), axis=1)
        t = -rows * rows[np.arange(len(rows)), axis][:, None]
        t[np.arange(len(rows)), axis] += 1.0
        tangent[degenerate] = t / np.linalg.norm(t, axis=1, keepdims=True)
    angle = np.arctan2(sin, cos)
    angle[~has_g] = 0.0
    return Rotation(tangent, angle, movable)


def nudge_n(docs: np.ndarray, directions: np.ndarray, gamma: float, plane: Rotation | None = None):
    """NUDGE-N: turn each unit ``d`` toward ``g`` by ``theta`` (``cos theta = 1 - gamma/2``), stopping at ``g``.

    Output rows are unit vectors (float64). Rows with zero ``g`` are returned unchanged.

    >>> e = nudge_n(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 1.0)
    >>> np.round(e, 6).tolist(), round(float(np.sum((e - [1.0, 0.0]) ** 2)), 6)
    ([[0.5, 0.866025]], 1.0)
    """
    d = np.asarray(docs, dtype=np.float64)
    g = np.asarray(directions, dtype=np.float64)
    plane = plane if plane is not None else rotation(d, g)
    theta = float(gamma_to_theta(gamma))
    turn = np.minimum(theta, plane.angle)
    e = np.cos(turn)[:, None] * d + np.sin(turn)[:, None] * plane.tangent
    saturated = plane.movable & (theta >= plane.angle)
    e[saturated] = g[saturated]
    e[~plane.movable] = d[~plane.movable]
    # Unit by construction; one more division removes the last ulp of drift.
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norm, out=e.copy(), where=norm > 0)
