"""Validating a model with onnxruntime (``checks``) on a device chosen honestly (``runtime``)."""
from __future__ import annotations

from front_onnx.validation.checks import ValidationReport, synthesize_inputs, validate

__all__ = ["ValidationReport", "synthesize_inputs", "validate"]
