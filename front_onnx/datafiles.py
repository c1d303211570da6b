"""Reading the user's array files (``.npz`` inputs, ``.npy`` labels) without pickles:
one clear line naming the file when it cannot be read."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from front_onnx.errors import FrontError

__all__ = ["load_npz", "load_npy"]


def load_npz(path: str | Path, what: str = "inputs") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive keyed by name."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise FrontError(f"{path}: cannot read {what} ({e})") from None


def load_npy(path: str | Path, what: str = "labels") -> np.ndarray:
    """The one array of an ``.npy`` file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise FrontError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise FrontError(f"{path}: expected one array (.npy), got an archive")
    return arr
