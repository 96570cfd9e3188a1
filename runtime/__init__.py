"""autofocus-trt runtime: the AutoFocus cascade and its post-processing ops (runtime.ops)."""
from . import ops

__all__ = ["ops"]
