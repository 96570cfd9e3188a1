"""Detections of one image, the engine's return value (always NumPy, on the host)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """boxes (N, 4) float32 [x1, y1, x2, y2] in original image pixels, scores (N,) float32 (Soft-NMS
    decayed), labels (N,) int32 (0-based index into the bundle's classes), by descending decision order.
    chips: per scale, the regions the network ran on for this image, (M, 4) float32 in original pixels
    (scale 1 of autofocus: the whole image; a scale that did not run: an empty array)."""
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    chips: list = field(default_factory=list)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(f"Detections: boxes, scores and labels differ in length "
                             f"({len(self.boxes)}, {len(self.scores)}, {len(self.labels)})")

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id) -> list[dict]:
        """COCO results entries: bbox [x, y, w, h], category_id = label + 1 (1-based in the bundle's class
        order, the ids model.synth writes; map them when your ground truth numbers classes otherwise)."""
        return [{"image_id": image_id, "category_id": int(c) + 1,
                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)}
                for (x1, y1, x2, y2), s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]
