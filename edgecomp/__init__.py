"""edgecomp: an edge deployment compiler (ONNX in; QDQ ONNX, TFLite and C for microcontrollers out)."""

__version__ = "0.1.0"
