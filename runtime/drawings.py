"""--viz drawings: one PNG an image, named after the image and its id, with each scale's chips and the
detections drawn on it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .inputs import Item, key

CHIP_COLOURS = [(255, 128, 0), (0, 200, 0), (0, 0, 255), (0, 220, 220)]  # BGR per scale


def drawing_name(item: Item) -> str:
    """--viz file name: the image's stem (readable) and a digest of its id (unique per input path)."""
    digest = hashlib.sha1(key(item.id).encode()).hexdigest()[:10]
    return f"{Path(item.path).stem}-{digest}.png"


def draw(image, detections, classes):
    """A copy of image (BGR) with each scale's chips (scale 1 blue, 2 green, 3 red, further scales yellow)
    and the detections (white, with class and score)."""
    import cv2
    out = image.copy()
    for s, chips in enumerate(detections.chips):
        colour = CHIP_COLOURS[min(s, len(CHIP_COLOURS) - 1)]
        for x1, y1, x2, y2 in chips.round().astype(int).tolist():
            cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 2)
    for (x1, y1, x2, y2), score, label in zip(detections.boxes.round().astype(int).tolist(),
                                              detections.scores.tolist(), detections.labels.tolist()):
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 255), 1)
        cv2.putText(out, f"{classes[label]} {score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out
