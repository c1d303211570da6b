"""Small, reusable training helpers on sklearn's digits (8x8 grey images, 10 classes).

Used by the demo, the tests and the benchmarks to give the sample models real knowledge
(a trained source) and to measure what a transfer is worth (accuracy of a target).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TEST_FRACTION = 0.2
AUGMENT = 0.25   # probability of a random +-1 pixel shift per training image


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): images as float32 [N, 1, 8, 8], labels int64 [N].

    Pixels are scaled to [0, 1] and standardized with the training set's mean and std (one
    scalar each); the split is stratified and fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return (torch.from_numpy(x_tr[:, None].copy()), torch.from_numpy(y_tr),
            torch.from_numpy(x_te[:, None].copy()), torch.from_numpy(y_te))


def random_shift(x: torch.Tensor, g: torch.Generator, p: float = 1.0, max_shift: int = 1) -> torch.Tensor:
    """Shift each image of a batch [B, C, H, W], with probability ``p``, by a random
    -max_shift..+max_shift pixels in each direction; the border is filled with the batch's
    background (its minimum value)."""
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=float(x.amin()))
    moved = torch.rand(b, generator=g) < p
    dy = torch.where(moved, torch.randint(0, 2 * s + 1, (b,), generator=g), s)
    dx = torch.where(moved, torch.randint(0, 2 * s + 1, (b,), generator=g), s)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]          # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]          # [B, 1, W]
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 1e-3,
                     seed: int = 0, batch_size: int = 64, weight_decay: float = 0.05,
                     augment: float = AUGMENT) -> nn.Module:
    """Train ``model`` in place: AdamW, cross-entropy, one-cycle cosine learning rate
    (10% warm-up), each training image shifted by a random +-1 pixel with probability
    ``augment``. Deterministic for a given seed. Returns the model, in eval mode.

    The sample models are tiny: call ``torch.set_num_threads(1)`` first on a small or busy
    machine (on 2 shared cores, two OpenMP threads made training up to 20x slower)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch),
                                                pct_start=0.1, anneal_strategy="cos")
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment > 0:
                xb = random_shift(xb, g, augment)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes of ``model`` (in eval mode) on ``x``."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    return int((predict(model, x) == y).sum()) / len(y)


def onnx_session(path: str | Path):
    """An onnxruntime CPU session on ``path``, quiet (errors only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_logits(path_or_session, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """The first output of an ONNX model (a path or a session) on ``x``."""
    sess = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return sess.run(None, {sess.get_inputs()[0].name: arr})[0]


def onnx_accuracy(path: str | Path, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that the ONNX model at ``path`` (onnxruntime, CPU) classifies as ``y``."""
    pred = onnx_logits(path, x).argmax(-1)
    return int((pred == (y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y))).sum()) / len(y)
