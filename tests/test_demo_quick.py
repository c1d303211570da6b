"""Quick checks of the sample training helpers (samples/train.py) used by the demo."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from samples.export import export  # noqa: E402
from samples.models import ViT, ViTConfig  # noqa: E402
from samples.train import accuracy, digits_data, onnx_accuracy, random_shift, train_classifier  # noqa: E402



@pytest.fixture(scope="module")
def digits():
    return digits_data(0)


def test_digits_data_shapes_and_split(digits):
    x_tr, y_tr, x_te, y_te = digits
    assert x_tr.shape[1:] == (1, 8, 8) and x_te.shape[1:] == (1, 8, 8)
    assert len(x_tr) + len(x_te) == 1797 and len(x_tr) == len(y_tr) and len(x_te) == len(y_te)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert abs(float(x_tr.mean())) < 1e-4 and abs(float(x_tr.std()) - 1) < 1e-3
    assert set(y_te.tolist()) == set(range(10))
    again = digits_data(0)
    assert all(torch.equal(a, b) for a, b in zip(digits, again))  # fixed split


def test_random_shift_moves_images_by_at_most_one_pixel(digits):
    x = digits[0][:64]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, g, p=0.0), x)
    y = random_shift(x, g, p=1.0)
    assert y.shape == x.shape
    bg = float(x.amin())
    shifted = 0
    for a, b in zip(x, y):
        pad = torch.nn.functional.pad(a, (1, 1, 1, 1), value=bg)
        crops = [pad[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)]
        assert any(torch.equal(b, c) for c in crops)
        shifted += not torch.equal(a, b)
    assert shifted > 32


def test_one_epoch_beats_chance_and_onnx_agrees(digits, one_thread, tmp_path):
    x_tr, y_tr, x_te, y_te = digits
    torch.manual_seed(0)
    model = ViT(ViTConfig(dim=32, depth=2, heads=4)).eval()
    before = accuracy(model, x_te, y_te)
    # small batches: a ViT needs steps more than epochs (measured over seeds 0-4: 0.30-0.41)
    train_classifier(model, x_tr, y_tr, epochs=1, lr=2e-3, seed=0, batch_size=8)
    after = accuracy(model, x_te, y_te)
    assert after >= 0.25 and after > before + 0.1, (before, after)
    assert not model.training

    path = export(model, x_te[:2], tmp_path / "vit.onnx", "legacy")
    assert abs(onnx_accuracy(path, x_te, y_te) - after) <= 1e-6
