"""edgecomp's own backends pass the conformance kit that plugin authors run."""

from edgecomp.testing.conformance import BackendConformance


class TestOnnxRuntimeConformance(BackendConformance):
    backend_name = "onnxruntime"


class TestCArrayConformance(BackendConformance):
    backend_name = "c-array"
    target = "cortex-m4"
