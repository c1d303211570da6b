"""Reading and writing ONNX models whose initializer values get rewritten.

This package is the file layer only: it knows how tensors are stored in an
ONNX file (inline ``raw_data``, typed fields, external data files) and how to
write a copy of a model with some initializer values replaced. It knows
nothing about how the new values are computed.

Reading
    :func:`load_model` parses the protobuf only (external tensors stay
    references). :meth:`OnnxModel.array` reads one tensor lazily; external data
    is memory-mapped read-only, so reading a 344 MB model costs no RAM up
    front and nothing is cached.

Writing
    :func:`save_model` writes a copy of the model in which the named
    initializers get new values and everything else keeps its bytes. Tensors
    are streamed one by one into a single ``<output name>.data`` file (or set
    inline), the output is written to temporary files in the destination
    directory and moved into place atomically (data file first, ``.onnx``
    last). Same input, same output bytes.

External data locations are checked before any file is opened: a location
must be relative, must not climb out of the model's directory with ``..`` and
must not resolve (through symlinks) to a file outside that directory.

All tensor bytes are little-endian, as ONNX specifies; a big-endian host is
not supported.
"""
from front_onnx.errors import OnnxFileError
from front_onnx.onnxio.model import OnnxModel, check_tensors, external_data_files, load_model, model_files
from front_onnx.onnxio.tensors import AUTO_EXTERNAL_LIMIT, MAX_TENSOR_BYTES, np_dtype, tensor_nbytes
from front_onnx.onnxio.walk import attribute, constant_tensor
from front_onnx.onnxio.writer import save_model

__all__ = ["OnnxFileError", "OnnxModel", "load_model", "save_model", "tensor_nbytes", "external_data_files",
           "check_tensors", "model_files", "np_dtype", "attribute", "constant_tensor", "AUTO_EXTERNAL_LIMIT", "MAX_TENSOR_BYTES"]
