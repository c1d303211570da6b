"""python -m front_onnx: the same as the front-onnx command."""
import sys

from front_onnx.cli import main

sys.exit(main())
