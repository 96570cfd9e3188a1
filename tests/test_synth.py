"""The synthetic dataset generator: determinism, COCO validity, size mix, clustering, geometry, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from model import synth

REPO = Path(__file__).resolve().parents[1]
N_STATS = 100  # images for the distribution checks


@pytest.fixture(scope="module")
def split100(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth100")
    synth.generate_split(out, seed=11, count=N_STATS, split="val")
    return out


@pytest.fixture(scope="module")
def coco100(split100):
    return json.loads((split100 / "annotations.json").read_text())


def _sqrt_areas(coco):
    b = np.array([a["bbox"] for a in coco["annotations"]], np.float64)
    return np.sqrt(b[:, 2] * b[:, 3])


def _files(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class TestDeterminism:
    def test_same_seed_same_bytes(self, tmp_path):
        synth.generate_split(tmp_path / "a", seed=7, count=4)
        synth.generate_split(tmp_path / "b", seed=7, count=4)
        a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
        assert sorted(a) == sorted(b) and len(a) == 5  # 4 images + annotations.json
        assert all(a[k] == b[k] for k in a)

    def test_image_depends_only_on_seed_and_index(self, tmp_path):
        # Image 2 of a 3-image run equals image 2 of a 5-image run (per-image generators).
        synth.generate_split(tmp_path / "a", seed=7, count=3)
        synth.generate_split(tmp_path / "b", seed=7, count=5)
        assert (tmp_path / "a/images/000002.jpg").read_bytes() == (tmp_path / "b/images/000002.jpg").read_bytes()

    def test_different_seeds_differ(self):
        a, _, _ = synth.generate_image(1, 0)
        b, _, _ = synth.generate_image(2, 0)
        assert a.shape != b.shape or not np.array_equal(a, b)

    def test_workers_do_not_change_output(self, tmp_path):
        synth.generate_split(tmp_path / "a", seed=3, count=4, workers=1)
        synth.generate_split(tmp_path / "b", seed=3, count=4, workers=2)
        a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
        assert a == b


class TestCoco:
    def test_pycocotools_loads(self, split100, coco100):
        c = COCO(str(split100 / "annotations.json"))
        assert len(c.getImgIds()) == N_STATS
        assert sorted(c.cats) == [1, 2, 3, 4, 5]
        assert [c.cats[i]["name"] for i in sorted(c.cats)] == list(synth.CLASSES)
        assert len(c.getAnnIds()) == len(coco100["annotations"])

    def test_images_match_records(self, split100, coco100):
        for im in coco100["images"][:10]:
            img = cv2.imread(str(split100 / "images" / im["file_name"]))
            assert img is not None and img.shape == (im["height"], im["width"], 3)

    def test_image_sizes_vary(self, coco100):
        w = np.array([im["width"] for im in coco100["images"]])
        h = np.array([im["height"] for im in coco100["images"]])
        assert w.min() >= 400 and w.max() <= 720 and h.min() >= 400 and h.max() <= 720
        assert len(set(zip(w, h))) > N_STATS // 2
        assert np.any(h > w), "some images are portrait"

    def test_boxes_inside_image_and_consistent(self, coco100):
        size = {im["id"]: (im["width"], im["height"]) for im in coco100["images"]}
        for a in coco100["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = size[a["image_id"]]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= W + 0.02 and y + h <= H + 0.02
            assert a["area"] == pytest.approx(w * h, abs=0.05)
            assert a["iscrowd"] == 0

    def test_objects_per_image(self, coco100):
        n = np.bincount([a["image_id"] for a in coco100["annotations"]], minlength=N_STATS + 1)[1:]
        assert 8 <= n.mean() <= 18
        assert n.min() >= 1 and n.max() <= 30

    def test_all_classes_present(self, coco100):
        counts = np.bincount([a["category_id"] for a in coco100["annotations"]], minlength=6)[1:]
        assert np.all(counts > 0.1 * counts.sum())


class TestSizes:
    def test_coco_like_mix(self, coco100):
        s = _sqrt_areas(coco100)
        small, large = np.mean(s < 32), np.mean(s > 96)
        assert 0.30 <= small <= 0.50, small
        assert 0.25 <= 1 - small - large <= 0.45
        assert 0.15 <= large <= 0.35, large

    def test_range(self, coco100):
        s = _sqrt_areas(coco100)
        assert 4.0 <= s.min() <= 8.0
        assert 220.0 <= s.max() <= 305.0

    def test_small_objects_are_clustered(self, coco100):
        # Fraction of the image covered by the union of small-object boxes dilated by 64 px (a FocusChip
        # would cover about this much): median well under half the image.
        by_image = {}
        for a in coco100["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a["bbox"])
        fractions = []
        for im in coco100["images"]:
            mask = np.zeros((im["height"], im["width"]), bool)
            small = [b for b in by_image.get(im["id"], []) if np.sqrt(b[2] * b[3]) < 32]
            if len(small) < 3:
                continue
            for x, y, w, h in small:
                mask[max(0, int(y) - 64):int(np.ceil(y + h)) + 64, max(0, int(x) - 64):int(np.ceil(x + w)) + 64] = True
            fractions.append(mask.mean())
        assert len(fractions) > N_STATS // 3
        assert np.median(fractions) < 0.3, np.median(fractions)


class TestGeometry:
    @pytest.mark.parametrize("label", range(len(synth.CLASSES)))
    @pytest.mark.parametrize("size", [7.0, 40.0, 150.0])
    def test_box_is_tight_on_drawn_shape(self, label, size):
        # Draw one object on a black image with its full coverage map; the annotated box must match the
        # extent of the pixels it touches (within one pixel).
        rng = np.random.default_rng([label, int(size)])
        obj = synth._make_object(rng, label, size, 600, 600)
        obj.cx, obj.cy = 300.3, 300.7
        img = np.zeros((600, 600, 3), np.uint8)
        owner = np.zeros((600, 600), np.int32)
        synth._render(img, owner, obj, 1)
        covered = owner == 1
        ys, xs = np.nonzero(covered)
        x0, y0, x1, y1 = obj.box()
        assert abs(xs.min() - x0) <= 1.0 and abs(xs.max() + 1 - x1) <= 1.0
        assert abs(ys.min() - y0) <= 1.0 and abs(ys.max() + 1 - y1) <= 1.0

    def test_generate_image_boxes_match_returned_image(self):
        img, boxes, labels = synth.generate_image(5, 3)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert boxes.shape == (len(labels), 4) and labels.dtype == np.int64
        assert np.all((labels >= 0) & (labels < len(synth.CLASSES)))
        H, W = img.shape[:2]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= W) and np.all(boxes[:, 3] <= H)


class TestCliAndEnsure:
    def test_cli(self, tmp_path):
        out = tmp_path / "cli"
        r = subprocess.run([sys.executable, "-m", "model.synth", "--split", "val", "--seed", "5", "--count", "3",
                            "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        coco = json.loads((out / "annotations.json").read_text())
        assert [im["file_name"] for im in coco["images"]] == ["000000.jpg", "000001.jpg", "000002.jpg"]
        assert coco["info"]["seed"] == 5 and coco["info"]["split"] == "val"
        assert len(list((out / "images").glob("*.jpg"))) == 3

    def test_cli_rejects_bad_split(self, tmp_path):
        r = subprocess.run([sys.executable, "-m", "model.synth", "--split", "holdout", "--out", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "--split" in r.stderr

    def test_ensure_split(self, tmp_path, monkeypatch):
        monkeypatch.setitem(synth.DEFAULT_SPLITS, "val", (2026, 3))  # a 3-image "default" split
        out = synth.ensure_split("val", tmp_path / "val")
        ann = out / "annotations.json"
        assert ann.is_file() and len(list((out / "images").glob("*.jpg"))) == 3
        before = ann.stat().st_mtime_ns
        assert synth.ensure_split("val", tmp_path / "val") == out
        assert ann.stat().st_mtime_ns == before, "a complete split is left alone"
        (out / "images" / "000001.jpg").unlink()
        synth.ensure_split("val", tmp_path / "val")
        assert (out / "images" / "000001.jpg").is_file(), "an incomplete split is regenerated"
        # Same bytes as an explicit generation with the default seed.
        synth.generate_split(tmp_path / "ref", seed=2026, count=3, split="val")
        assert _files(out / "images") == _files(tmp_path / "ref" / "images")

    def test_default_splits_share_no_images(self):
        """tune (choosing settings), val (measuring) and train are drawn from different seeds, so no image
        of one is an image of another."""
        seeds = [seed for seed, _ in synth.DEFAULT_SPLITS.values()]
        assert len(set(seeds)) == len(seeds)
        firsts = [synth.generate_image(seed, 0)[0] for seed in seeds]
        assert all(not np.array_equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])

    def test_ensure_split_rejects_unknown(self):
        with pytest.raises(ValueError, match="split"):
            synth.ensure_split("holdout")

    def test_generate_split_rejects_bad_count(self, tmp_path):
        with pytest.raises(ValueError, match="count"):
            synth.generate_split(tmp_path, seed=0, count=-1)
