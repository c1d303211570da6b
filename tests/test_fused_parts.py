"""A fused qkv projection is found as 3 parts however the exporter indexes the parts:
Split, scalar Gathers (torch legacy ``unbind``) or unit Slices (torch dynamo ``unbind``)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from front_onnx.analysis.slots import PARTS, analyze_slots


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _qkv_graph(how: str, d: int = 8, heads: int = 2, T: int = 4) -> onnx.ModelProto:
    hd = d // heads
    inits = [numpy_helper.from_array(np.ones((d, 3 * d), np.float32), "qkv.weight"),
             numpy_helper.from_array(np.ones((hd, hd), np.float32), "proj.weight"),
             _i64("shape", [1, T, 3, heads, hd])]
    nodes = [helper.make_node("MatMul", ["x", "qkv.weight"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["p"], perm=[2, 0, 3, 1, 4])]
    outs = []
    for i in range(3):
        if how == "slice":
            inits += [_i64(f"s{i}", [i]), _i64(f"e{i}", [i + 1]), _i64(f"a{i}", [0])]
            nodes += [helper.make_node("Slice", ["p", f"s{i}", f"e{i}", f"a{i}"], [f"sl{i}"]),
                      helper.make_node("Squeeze", [f"sl{i}", f"a{i}"], [f"o{i}"])]
        else:
            inits.append(_i64(f"g{i}", i))
            nodes.append(helper.make_node("Gather", ["p", f"g{i}"], [f"o{i}"], axis=0))
        nodes.append(helper.make_node("MatMul", [f"o{i}", "proj.weight"], [f"y{i}"]))  # not an output layer
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, d])], outs,
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("how", ["slice", "gather"])
def test_fused_qkv_is_three_parts(how):
    s = next(s for s in analyze_slots(_qkv_graph(how)).slots if s.initializer == "qkv.weight")
    assert s.layout.parts == 3 and s.layout.kinds[0] == PARTS


def test_slices_that_do_not_cover_the_parts_are_not_parts():
    m = _qkv_graph("slice")
    for t in m.graph.initializer:
        if t.name == "e1":
            t.CopyFrom(_i64("e1", [3]))  # the second slice takes [1, 3): not unit parts
    s = next(s for s in analyze_slots(m).slots if s.initializer == "qkv.weight")
    assert s.layout.parts == 1
