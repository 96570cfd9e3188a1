"""Crop ops: chips cut out of images, resized and normalised into one network batch
(csrc/ops/crop_resize)."""
from __future__ import annotations

import numpy as np

from ._checks import (_array, _cuda_ext, _cuda_stream, _ext, _host_array, _int_at_least, _is_cuda, _is_tensor,
                      _same_device, _same_kind, to_device)


def _crop_slot_and_norm(out_hw, mean, std) -> tuple:
    """Checked (out_h, out_w) and mean, std as lists of 3 floats (crop_resize, crop_resize_images)."""
    if not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2:
        raise ValueError(f"out_hw: expected (height, width), got {out_hw!r}")
    out_h, out_w = (_int_at_least(v, "out_hw", 1) for v in out_hw)
    mean_, std_ = _host_array(mean, "mean"), _host_array(std, "std")
    for arr, name in ((mean_, "mean"), (std_, "std")):
        if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected 3 finite numbers (output channel order), got {arr.tolist()}")
    if (std_ <= 0).any():
        raise ValueError(f"std: expected positive values, got {std_.tolist()}")
    return out_h, out_w, [float(v) for v in mean_], [float(v) for v in std_]


def _crop_sizes(ch, sc, out_h: int, out_w: int) -> tuple:
    """(oh, ow) int32 of each chip resized, in float32 as the kernels compute them, for float32 chips
    (M, 4) and scales (M,), NumPy or torch alike; ValueError naming the first chip that is not finite, has
    a scale <= 0, or resizes to nothing or to more than out_hw."""
    if _is_tensor(ch):
        import torch
        extent = lambda lo, hi: torch.floor((hi - lo) * sc + 0.5).to(torch.int32)  # noqa: E731
        finite = torch.isfinite(ch).all(1) & torch.isfinite(sc)
    else:
        extent = lambda lo, hi: np.floor((hi - lo) * sc + np.float32(0.5)).astype(np.int32)  # noqa: E731
        finite = np.isfinite(ch).all(1) & np.isfinite(sc)
    with np.errstate(invalid="ignore"):  # NaN/inf chips: refused just below
        oh, ow = extent(ch[:, 1], ch[:, 3]), extent(ch[:, 0], ch[:, 2])
    bad = ~finite | (sc <= 0) | (ch[:, 2] <= ch[:, 0]) | (ch[:, 3] <= ch[:, 1]) | (oh < 1) | (ow < 1) \
        | (oh > out_h) | (ow > out_w)
    if ch.shape[0] and bool(bad.any()):
        i = int(np.flatnonzero(bad.cpu().numpy() if _is_tensor(bad) else bad)[0])
        box, s = [float(v) for v in ch[i]], float(sc[i])
        if not (np.isfinite(box).all() and np.isfinite(s) and s > 0):
            raise ValueError(f"chips/scales: chip {i} {box} with scale {s}: expected finite boxes and positive scales")
        raise ValueError(f"chips: chip {i} {box} at scale {s} resizes to ({int(oh[i])}, {int(ow[i])}) pixels: "
                         f"expected x2 > x1, y2 > y1 and a size of 1..{(out_h, out_w)} (out_hw)")
    return oh, ow


def crop_resize(image, chips, scales, out_hw, mean, std, dtype="float32", bgr_to_rgb: bool = True):
    """Cuts chips out of an (H, W, 3) uint8 image into one normalised network batch.

    chips (M, 4) float [x1, y1, x2, y2) in image pixels; scales (M,) or a scalar: chip m is resized to
    oh = floor((y2 - y1) * s + 0.5), ow = floor((x2 - x1) * s + 0.5) (in float32), which must fit in
    out_hw = (Hb, Wb), and placed at the top-left of its slot, the rest 0. Sampling is the exact affine
    map src = x1 + (u + 0.5) / s - 0.5 (so a box b in the chip projects back as b / s + (x1, y1)),
    bilinear, clamped to the image (replicated edge). Values ((pixel / 255) - mean[c]) / std[c], channels
    BGR -> RGB when bgr_to_rgb (mean/std in output order). Returns (M, 3, Hb, Wb) float32 or float16 on
    the image's device. On CUDA the size check reads one flag on the host.
    """
    img = _array(image, "image", (np.uint8,), ndim=3, last_dim=3)
    out_dtype = str(dtype).replace("torch.", "")
    if out_dtype not in ("float32", "float16"):
        raise ValueError(f"dtype: expected 'float32' or 'float16', got {dtype!r}")
    out_h, out_w, mean_, std_ = _crop_slot_and_norm(out_hw, mean, std)
    on_cuda = _is_cuda(img)
    # Chips and scales given on the host (the cascade's) are checked there and sent in one copy: checking
    # them on the GPU would cost a host read of the result.
    check_on_device = on_cuda and (_is_tensor(chips) or _is_tensor(scales))
    if check_on_device:
        import torch
        on_image_device = lambda x: (x if _is_tensor(x) else torch.as_tensor(np.asarray(x))).to(  # noqa: E731
            img.device)
        ch = _array(on_image_device(chips), "chips", (np.float32, np.float64), ndim=2, last_dim=4).float()
        sc = on_image_device(scales)
    else:
        ch = _array(chips, "chips", (np.float32, np.float64), ndim=2, last_dim=4).astype(np.float32)
        sc = _host_array(scales, "scales")
    if not np.issubdtype(np.dtype(str(sc.dtype).replace("torch.", "")), np.number):
        raise TypeError(f"scales: expected numbers, got dtype {sc.dtype}")
    count = ch.shape[0]
    if sc.ndim == 0:
        sc = sc.expand(count) if check_on_device else np.full(count, sc)
    if tuple(sc.shape) != (count,):
        raise ValueError(f"scales: expected a scalar or shape ({count},) to match chips, got {tuple(sc.shape)}")
    if count and img.shape[0] * img.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty image to crop chips from, got shape {tuple(img.shape)}")

    sc = sc.to(torch.float32).contiguous() if check_on_device else sc.astype(np.float32)
    oh, ow = _crop_sizes(ch, sc, out_h, out_w)  # in float32, the same arithmetic on either device
    sizes = (torch.stack([oh, ow], 1) if check_on_device else np.stack([oh, ow], 1)).reshape(-1, 2)
    if on_cuda:
        import torch
        if not check_on_device:  # one host-to-device copy (sizes < 2^24: exact in float32)
            packed = to_device(np.concatenate([ch, sc[:, None], sizes.astype(np.float32)], 1), img.device)
            ch, sc, sizes = packed[:, :4].contiguous(), packed[:, 4].contiguous(), packed[:, 5:].to(torch.int32)
        out = torch.empty((count, 3, out_h, out_w), dtype=getattr(torch, out_dtype), device=img.device)
        sizes = sizes.contiguous()
        _cuda_ext().crop_resize_cuda(img.data_ptr(), img.shape[0], img.shape[1], ch.data_ptr(), sc.data_ptr(),
                                     sizes.data_ptr(), count, out_h, out_w, mean_, std_, bool(bgr_to_rgb),
                                     out_dtype == "float16", out.data_ptr(), _cuda_stream(img))
        return out
    out = _ext().crop_resize_cpu(img, np.ascontiguousarray(ch), np.ascontiguousarray(sc),
                                 np.ascontiguousarray(sizes), out_h, out_w, mean_, std_, bool(bgr_to_rgb))
    if out_dtype == "float16":
        out = out.astype(np.float16)
    return _same_kind(out, image)


def crop_resize_images(images: list, index, chips, scales, out_hw, mean, std, bgr_to_rgb: bool = True):
    """crop_resize over several images at once: chip m is cut from images[index[m]] (each (H, W, 3) uint8,
    all NumPy / CPU tensors or all on one CUDA device). index (M,) ints, chips (M, 4) and scales (M,) are
    host arrays (checked there: no host read on CUDA). Returns (M, 3, Hb, Wb) float32 like crop_resize
    of each image's chips, in chip order. On CUDA: two host-to-device copies (the chips' parameters and
    their images' addresses) and one launch for the whole batch, where crop_resize takes one per image."""
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError("images: expected a non-empty list of (H, W, 3) uint8 images")
    imgs = [_array(im, f"images[{k}]", (np.uint8,), ndim=3, last_dim=3) for k, im in enumerate(images)]
    _same_device(**{f"images[{k}]": im for k, im in enumerate(imgs)})
    if any(_is_tensor(a) for a in (index, chips, scales)):
        raise TypeError("index, chips, scales: expected host arrays (NumPy or lists)")
    idx = _host_array(index, "index")
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"index: expected (M,) ints, got shape {idx.shape} dtype {idx.dtype}")
    ch = _array(np.asarray(chips), "chips", (np.float32, np.float64), ndim=2, last_dim=4).astype(np.float32)
    sc = _host_array(scales, "scales").astype(np.float32).reshape(-1)
    count = ch.shape[0]
    if idx.shape[0] != count or sc.shape[0] != count:
        raise ValueError(f"index, scales: expected one per chip ({count}), got {idx.shape[0]} and {sc.shape[0]}")
    if count and ((idx < 0) | (idx >= len(imgs))).any():
        raise ValueError(f"index: expected image indices in [0, {len(imgs)}), got {idx.min()}..{idx.max()}")
    if not _is_cuda(imgs[0]):  # crop_resize per image (it checks the chips, sizes and normalisation)
        groups = np.unique(idx)
        if len(groups) <= 1:  # (one image, or none: its crop_resize as it is, no copy into a batch)
            k = int(groups[0]) if len(groups) else 0
            return _same_kind(crop_resize(imgs[k], ch, sc, out_hw, mean, std, bgr_to_rgb=bgr_to_rgb), images[0])
        rows = [np.flatnonzero(idx == k) for k in groups]
        parts = [crop_resize(imgs[k], ch[r], sc[r], out_hw, mean, std, bgr_to_rgb=bgr_to_rgb)
                 for k, r in zip(groups, rows)]
        out = np.empty((count, *parts[0].shape[1:]), np.float32)
        for r, part in zip(rows, parts):
            out[r] = part
        return _same_kind(out, images[0])
    hw = np.array([im.shape[:2] for im in imgs], np.int64).reshape(-1, 2)[idx.astype(np.int64)]
    if count and (hw.min(initial=1) == 0):
        raise ValueError("images: expected non-empty images to crop chips from")
    out_h, out_w, mean_, std_ = _crop_slot_and_norm(out_hw, mean, std)
    oh, ow = _crop_sizes(ch, sc, out_h, out_w)
    import torch
    device = imgs[0].device
    # float32 holds the sizes exactly (< 2^24)
    params = to_device(np.concatenate([ch, sc[:, None], oh[:, None], ow[:, None], hw], 1).astype(np.float32), device)
    addresses = to_device(np.array([imgs[k].data_ptr() for k in idx], np.int64), device)
    out = torch.empty((count, 3, out_h, out_w), dtype=torch.float32, device=device)
    if count:
        _cuda_ext().crop_resize_images_cuda(addresses.data_ptr(), params.data_ptr(), count, out_h, out_w, mean_,
                                            std_, bool(bgr_to_rgb), out.data_ptr(), _cuda_stream(imgs[0]))
    return out
