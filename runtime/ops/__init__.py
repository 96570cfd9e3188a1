"""Post-processing ops of the AutoFocus cascade, one Python entry for the C++ (CPU) and CUDA kernels.

NumPy arrays in, NumPy arrays out; torch tensors in, torch tensors out on the same device. NumPy arrays
and CPU tensors run the C++ kernels (tensors zero-copy through NumPy); CUDA tensors run the CUDA kernels
on the current torch stream and stay on the GPU. Bad input raises ValueError/TypeError naming the
argument, before any kernel runs (inside deferred_checks(), the value checks of CUDA tensors raise at the
block's end instead).

One module per concern: _checks (argument checks, the extension handle runtime._C, deferred_checks and
trusted_values), maps (dilate, connected components, FocusChips, chips_to_image, paint_boxes), crops
(crop_resize), boxes (decode, NMS, Soft-NMS, focus stacking, top-k).
"""
from ._checks import _C, _number, deferred_checks, to_device, trusted_values, with_cuda
from .boxes import decode, nms, soft_nms, soft_nms_segments, stack_prune, top_k
from .crops import crop_resize, crop_resize_images
from .maps import (DEFAULT_MERGE, MERGE_RULES, chips_to_image, connected_components, dilate, focus_chips,
                   focus_chips_batched, paint_boxes)

__all__ = ["DEFAULT_MERGE", "MERGE_RULES", "chips_to_image", "connected_components", "crop_resize",
           "crop_resize_images", "decode", "deferred_checks", "dilate", "focus_chips", "focus_chips_batched", "nms",
           "paint_boxes", "soft_nms", "soft_nms_segments", "stack_prune", "to_device", "top_k", "trusted_values",
           "with_cuda"]
