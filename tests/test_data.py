"""The COCO loader: round trip against pycocotools, image reading, and the named errors."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from model import synth
from model.data import CocoSet, load_coco, read_image


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    synth.generate_split(out, seed=21, count=6, split="val")
    return out


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _minimal():
    return {"images": [{"id": 3, "file_name": "a.jpg", "width": 10, "height": 8}],
            "annotations": [{"id": 1, "image_id": 3, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12,
                             "iscrowd": 0}],
            "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]}


class TestLoadCoco:
    def test_round_trip_matches_pycocotools(self, split):
        ann = split / "annotations.json"
        ds = load_coco(ann)
        ref = COCO(str(ann))
        assert isinstance(ds, CocoSet)
        assert ds.root == split / "images" and ds.annotations_path == ann
        cat_ids = sorted(ref.cats)
        assert ds.classes == [ref.cats[c]["name"] for c in cat_ids] == list(synth.CLASSES)
        assert [im["id"] for im in ds.images] == sorted(ref.imgs)
        for im in ds.images:
            r = ref.imgs[im["id"]]
            assert (im["file_name"], im["width"], im["height"]) == (r["file_name"], r["width"], r["height"])
            assert im["path"] == split / "images" / r["file_name"] and im["path"].is_file()
            anns = ref.loadAnns(ref.getAnnIds(imgIds=[im["id"]]))
            expect = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                               for a in anns], np.float64).reshape(-1, 4)
            b = ds.boxes[im["id"]]
            assert b.dtype == np.float32 and b.shape == expect.shape
            np.testing.assert_allclose(b, expect, atol=1e-3)
            l = ds.labels[im["id"]]
            assert l.dtype == np.int64
            assert l.tolist() == [cat_ids.index(a["category_id"]) for a in anns]

    def test_labels_follow_category_id_order_and_images_dir(self, tmp_path):
        ds = load_coco(_write(tmp_path / "x.json", _minimal()), images_dir=tmp_path / "elsewhere")
        assert ds.classes == ["a", "b"]  # category 2 then 7
        assert ds.labels[3].tolist() == [1]
        np.testing.assert_array_equal(ds.boxes[3], np.array([[1, 2, 4, 6]], np.float32))
        assert ds.images[0]["path"] == tmp_path / "elsewhere" / "a.jpg"

    def test_image_without_annotations_gives_empty_arrays(self, tmp_path):
        d = _minimal()
        d["annotations"] = []
        ds = load_coco(_write(tmp_path / "x.json", d))
        assert ds.boxes[3].shape == (0, 4) and ds.boxes[3].dtype == np.float32
        assert ds.labels[3].shape == (0,) and ds.labels[3].dtype == np.int64

    def test_crowd_annotations_left_out(self, tmp_path):
        d = _minimal()
        d["annotations"].append(dict(d["annotations"][0], id=2, iscrowd=1))
        assert load_coco(_write(tmp_path / "x.json", d)).boxes[3].shape == (1, 4)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="nothere.json"):
            load_coco(tmp_path / "nothere.json")

    @pytest.mark.parametrize("mutate, what", [
        (lambda d: "{not json", "JSON"),
        (lambda d: [1, 2], "top level"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "annotations"),
        (lambda d: {k: v for k, v in d.items() if k != "categories"}, "categories"),
        (lambda d: (d["annotations"][0].update(image_id=99), d)[1], "unknown image"),
        (lambda d: (d["annotations"][0].update(category_id=99), d)[1], "unknown category"),
        (lambda d: (d["annotations"][0].update(bbox=[0, 0, -1, 2]), d)[1], "negative"),
        (lambda d: (d["annotations"][0].update(bbox=[0, 0, 1]), d)[1], "bbox"),
        (lambda d: (d["images"][0].update(width=-5), d)[1], "size"),
        (lambda d: (d["images"][0].pop("file_name"), d)[1], "file_name"),
        (lambda d: (d["categories"][0].pop("name"), d)[1], "name"),
    ])
    def test_not_coco(self, tmp_path, mutate, what):
        path = _write(tmp_path / "bad.json", mutate(_minimal()))
        with pytest.raises(ValueError, match="bad.json") as e:
            load_coco(path)
        assert what in str(e.value)


class TestReadImage:
    def test_reads_generated_jpeg_like_opencv(self, split):
        p = split / "images" / "000000.jpg"
        img = read_image(p)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        np.testing.assert_array_equal(img, cv2.imread(str(p), cv2.IMREAD_COLOR))
        assert img.flags["C_CONTIGUOUS"]

    def test_grayscale_becomes_three_channels(self, tmp_path):
        g = np.arange(48, dtype=np.uint8).reshape(6, 8)
        cv2.imwrite(str(tmp_path / "g.png"), g)
        img = read_image(tmp_path / "g.png")
        assert img.shape == (6, 8, 3)
        for c in range(3):
            np.testing.assert_array_equal(img[..., c], g)

    def test_alpha_dropped(self, tmp_path):
        rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "a.png"), rgba)
        img = read_image(str(tmp_path / "a.png"))
        np.testing.assert_array_equal(img, rgba[..., :3])

    def test_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="gone.jpg"):
            read_image(tmp_path / "gone.jpg")

    @pytest.mark.parametrize("content", [b"", b"this is not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 10])
    def test_corrupt(self, tmp_path, content):
        (tmp_path / "bad.jpg").write_bytes(content)
        with pytest.raises(ValueError, match="bad.jpg"):
            read_image(tmp_path / "bad.jpg")
