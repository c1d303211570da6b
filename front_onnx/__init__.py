"""front-onnx: FRONT (frequency-domain knowledge transfer) at the ONNX graph level.

A trained source model's low-frequency weight spectrum (its learngene) initializes a
target ONNX model of another width and depth, without training.
"""
__version__ = "0.1.0"

from front_onnx.api import (FrontError, InitResult, ValidationFailed, extract, initialize, inspect,  # noqa: E402
                            plan, refine, refine_module, transfer, validate, weights)
from front_onnx.inspection import InspectReport  # noqa: E402
from front_onnx.validation import ValidationReport  # noqa: E402
from front_onnx.learngene import Learngene, LearngeneError  # noqa: E402
from front_onnx.onnx_io import OnnxFileError  # noqa: E402

__all__ = ["extract", "initialize", "plan", "transfer", "Learngene", "LearngeneError", "OnnxFileError",
           "FrontError", "InitResult", "validate", "ValidationReport", "ValidationFailed", "inspect", "InspectReport",
           "weights", "refine", "refine_module", "__version__"]
