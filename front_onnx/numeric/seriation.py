"""Orders for units whose order means nothing (neurons, channels): a permutation that puts
similar units next to each other, so that a low-pass along the axis blends neighbours that
resemble each other rather than unrelated ones.

Spectral seriation (Atkins, Boman and Hendrickson 1998): the units sorted by the Fiedler
vector of the graph whose edge weights are the absolute cosine similarities of the units'
weight vectors. The Fiedler vector is the smooth function on that graph with the least
variation across heavy edges, so sorting by it is the order with similar units adjacent.
"""
from __future__ import annotations

import numpy as np


def smooth_order(vectors: np.ndarray) -> np.ndarray:
    """A permutation of the rows of ``vectors`` [n, m] (one row per unit) putting similar rows
    next to each other; deterministic (the Fiedler vector's sign is fixed by putting the unit
    with the lowest index in the first half)."""
    x = np.asarray(vectors, np.float64)
    n = x.shape[0]
    if n < 3:
        return np.arange(n)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norms == 0, 1.0, norms)
    s = np.abs(u @ u.T)
    np.fill_diagonal(s, 0.0)
    lap = np.diag(s.sum(axis=1)) - s
    _, vecs = np.linalg.eigh(lap)
    f = vecs[:, 1]
    order = np.argsort(f, kind="stable")
    if np.where(order == 0)[0][0] >= n / 2:
        order = order[::-1].copy()
    return order


def roughness(vectors: np.ndarray) -> float:
    """Mean cosine distance between neighbouring rows: how far an order is from smooth."""
    x = np.asarray(vectors, np.float64)
    if x.shape[0] < 2:
        return 0.0
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    return float(np.mean(1.0 - np.abs(np.sum(u[1:] * u[:-1], axis=1))))
