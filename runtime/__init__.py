"""autofocus-trt runtime: the AutoFocus cascade (AutoFocusEngine), its post-processing ops (runtime.ops).

AutoFocusEngine and Detections are imported on first use, so `from runtime import ops` stays light.
"""
from . import ops

__all__ = ["AutoFocusEngine", "Detections", "ops"]


def __getattr__(name):
    if name == "AutoFocusEngine":
        from .engine import AutoFocusEngine
        return AutoFocusEngine
    if name == "Detections":
        from .detections import Detections
        return Detections
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
