"""front-onnx: FRONT (frequency-domain knowledge transfer) at the ONNX graph level.

A trained source model's low-frequency weight spectrum (its learngene) initializes a
target ONNX model of another width and depth, without training.

The package in layers, bottom to top (docs/architecture.md): ``errors``/``outputs``,
``numeric`` (no ONNX), ``onnxio`` (no FRONT), ``analysis``, ``method``, ``validation``,
``torch`` (optional), then ``api`` and the ``cli``. Imports only run downward.
"""
from front_onnx._version import __version__
from front_onnx.analysis.inspection import InspectReport
from front_onnx.api import (InitResult, extract, initialize, inspect, plan, refine, refine_module, transfer,
                            transfer_module, validate, weights)
from front_onnx.errors import FrontError, LearngeneError, OnnxFileError, OutputRefused, ValidationFailed
from front_onnx.method.learngene import Learngene
from front_onnx.validation.checks import ValidationReport

__all__ = ["extract", "initialize", "plan", "transfer", "Learngene", "LearngeneError", "OnnxFileError",
           "FrontError", "OutputRefused", "InitResult", "validate", "ValidationReport", "ValidationFailed",
           "inspect", "InspectReport", "weights", "refine", "refine_module", "transfer_module", "__version__"]
