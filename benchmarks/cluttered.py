"""Cluttered digits: a harder image task for the convergence benchmark's CNN settings, made
offline from sklearn's 8x8 digits (in the style of cluttered MNIST, Mnih et al. 2014).

Each sample is a ``canvas`` x ``canvas`` grey image holding one digit, bilinearly resampled at
a random scale and small rotation and placed at a random position, plus ``fragments`` random
crops of other digits (each resampled the same way and placed anywhere) as clutter, plus
Gaussian pixel noise; the label is the placed digit's. Layers are combined by maximum, so
a fragment can cover part of the digit. Training samples are made from the training split of
``samples.train.digits_data`` and test samples from its test split (the same stratified
split), so no digit image is shared between them. numpy only, deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
import torch

CANVAS = 24
SCALE = (1.0, 1.6)          # digit size on the canvas: 8 x scale pixels
ROTATION = 15.0             # degrees, uniform in +-ROTATION
FRAGMENTS = 6               # clutter pieces per sample
FRAGMENT = (3, 5)           # a fragment is a crop of f x f source pixels, f in this range
NOISE = 0.1                 # std of the Gaussian pixel noise (images are in [0, 1] before it)


def raw_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's digits in [0, 1] ([N, 8, 8] float32) split as ``samples.train.digits_data(seed)``
    splits them (before its standardization)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from samples.train import TEST_FRACTION

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _sample(images: np.ndarray, centers: np.ndarray, scale: np.ndarray, angle: np.ndarray, canvas: int,
            window: np.ndarray | None = None) -> np.ndarray:
    """Draw ``images`` [N, 8, 8] onto N canvases: each source image scaled by ``scale``, rotated by
    ``angle`` (radians) about its centre, its centre at ``centers`` [N, 2] (row, col, canvas
    pixels), bilinear, zero outside the image. ``window`` [N, 4] (row0, col0, row1, col1, source
    pixels, inclusive) keeps only that crop of each source image."""
    n, h, w = images.shape
    grid = np.arange(canvas, dtype=np.float32)
    dr = grid[None, :, None] - centers[:, 0, None, None]          # [N, C, 1]
    dc = grid[None, None, :] - centers[:, 1, None, None]          # [N, 1, C]
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    r = cos * dr - sin * dc + (h - 1) / 2                          # inverse map: canvas -> source
    c = sin * dr + cos * dc + (w - 1) / 2
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = (r - r0).astype(np.float32), (c - c0).astype(np.float32)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    idx = np.arange(n)[:, None, None]
    out = np.zeros((n, canvas, canvas), np.float32)
    for dy, wy in ((0, 1 - fr), (1, fr)):
        for dx, wx in ((0, 1 - fc), (1, fc)):
            rr, cc = r0 + dy, c0 + dx
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            if window is not None:
                ok &= ((rr >= window[:, 0, None, None]) & (rr <= window[:, 2, None, None])
                       & (cc >= window[:, 1, None, None]) & (cc <= window[:, 3, None, None]))
            v = images[idx, np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]
            out += np.where(ok, v, 0.0) * wy * wx
    return out


def cluttered(images: np.ndarray, labels: np.ndarray, n: int, seed: int, canvas: int = CANVAS,
              fragments: int = FRAGMENTS, noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cluttered samples ([n, canvas, canvas] float32, [n] int64) drawn from ``images`` /
    ``labels``: the digits are taken in shuffled passes over ``images`` (balanced), the clutter
    from random other images of the same set."""
    rng = np.random.default_rng(seed)
    m = len(images)
    order = np.concatenate([rng.permutation(m) for _ in range(-(-n // m))])[:n]

    def pose(k: int, placed: bool):
        scale = rng.uniform(*SCALE, k).astype(np.float32)
        angle = np.deg2rad(rng.uniform(-ROTATION, ROTATION, k)).astype(np.float32)
        if placed:   # the digit's centre at least half a digit from the border
            half = 4 * scale
            centers = np.stack([rng.uniform(half - 0.5, canvas - half - 0.5) for _ in range(2)], 1)
        else:        # anywhere
            centers = rng.uniform(-0.5, canvas - 0.5, (k, 2))
        return centers.astype(np.float32), scale, angle

    x = _sample(images[order], *pose(n, True), canvas)
    for _ in range(fragments):
        other = (order + rng.integers(1, m, n)) % m                 # never the placed image itself
        f = rng.integers(FRAGMENT[0], FRAGMENT[1] + 1, n)
        r0, c0 = rng.integers(0, 8 - f + 1), rng.integers(0, 8 - f + 1)
        window = np.stack([r0, c0, r0 + f - 1, c0 + f - 1], 1)
        centers, scale, angle = pose(n, False)
        # the crop's own centre (not the image's) lands at ``centers``
        off = np.stack([(r0 + r0 + f - 1) / 2 - 3.5, (c0 + c0 + f - 1) / 2 - 3.5], 1) * scale[:, None]
        ca, sa = np.cos(angle), np.sin(angle)
        shift = np.stack([ca * off[:, 0] + sa * off[:, 1], -sa * off[:, 0] + ca * off[:, 1]], 1)
        piece = _sample(images[other], (centers - shift).astype(np.float32), scale, angle, canvas, window)
        np.maximum(x, piece, out=x)
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    return x, labels[order]


def cluttered_data(n_train: int = 10_000, n_test: int = 2_000, seed: int = 0, **kw):
    """(x_train, y_train, x_test, y_test) as torch tensors ([N, 1, C, C] float32, [N] int64),
    standardized with the training set's mean and std (one scalar each), like ``digits_data``."""
    x_tr, y_tr, x_te, y_te = raw_digits(0)
    a, ya = cluttered(x_tr, y_tr, n_train, seed, **kw)
    b, yb = cluttered(x_te, y_te, n_test, seed + 1, **kw)
    mean, std = float(a.mean()), float(a.std())
    a, b = (a - mean) / std, (b - mean) / std
    return (torch.from_numpy(a[:, None].copy()), torch.from_numpy(ya),
            torch.from_numpy(b[:, None].copy()), torch.from_numpy(yb))
