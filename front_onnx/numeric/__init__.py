"""The numeric core: DCT resampling, depth mixing and statistics on numpy arrays (no ONNX)."""
