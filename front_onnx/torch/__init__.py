"""PyTorch side of front-onnx (FRONT+): run ONNX graphs as trainable torch modules, the spectral
penalty, and the refinement loop. Importing it needs torch; the rest of front-onnx does not."""
