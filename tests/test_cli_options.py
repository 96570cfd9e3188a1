"""python -m runtime's detection options (runtime/cli_options.py): --score-threshold and --max-detections
against the engine's own detections filtered with NumPy, the options each mode uses, and the default
bundle found from any folder (or a message saying how to get one)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine_fixtures import val_images
from runtime import AutoFocusEngine, Detections
from runtime import cli_options
from runtime.__main__ import main
from runtime.drawings import draw


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_images")
    paths = []
    for i, (image, _, _) in enumerate(val_images(2)):
        paths.append(folder / f"img_{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def _run(paths, bundle, out, *options):
    code = main([str(p) for p in paths] + ["--bundle", str(bundle.folder), "--backend", "onnxruntime",
                                           "--out", str(out), *options])
    assert code == 0
    return json.loads(out.read_text())


def _as_coco_boxes(boxes):
    return np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]


def test_score_threshold_keeps_what_numpy_keeps(bundle, engine, image_paths, tmp_path):
    want_all = engine(image_paths[0], mode="sniper")
    assert len(want_all) > 4, "the random bundle gives enough detections to split"
    # A threshold inside the scores: some detections above it, some below.
    ordered = np.sort(want_all.scores)[::-1]
    threshold = float(ordered[len(ordered) // 2] + ordered[len(ordered) // 2 + 1]) / 2
    keep = want_all.scores >= np.float32(threshold)
    assert 0 < keep.sum() < len(keep)
    viz = tmp_path / "viz"
    results = _run(image_paths[:1], bundle, tmp_path / "r.json", "--mode", "sniper",
                   "--score-threshold", repr(threshold), "--viz", str(viz))
    assert len(results) == keep.sum()
    assert all(r["score"] >= threshold for r in results)
    np.testing.assert_allclose([r["score"] for r in results], want_all.scores[keep], rtol=0, atol=1e-6)
    np.testing.assert_allclose([r["bbox"] for r in results], _as_coco_boxes(want_all.boxes[keep]), atol=1e-3)
    assert [r["category_id"] for r in results] == (want_all.labels[keep] + 1).tolist()
    # The drawing shows the kept detections only.
    image = cv2.imread(str(image_paths[0]))
    kept = Detections(want_all.boxes[keep], want_all.scores[keep], want_all.labels[keep], want_all.chips)
    (drawing,) = viz.glob("img_0-*.png")  # runtime.drawings.drawing_name: stem and a digest of the id
    drawn = cv2.imread(str(drawing))
    np.testing.assert_array_equal(drawn, draw(image, kept, engine.classes))
    assert not np.array_equal(drawn, draw(image, want_all, engine.classes))
    # Above every score: an empty, valid result.
    assert _run(image_paths[:1], bundle, tmp_path / "none.json", "--mode", "sniper", "--score-threshold", "1") == []


def test_max_detections_keeps_the_best(bundle, engine, image_paths, tmp_path):
    for mode in ("autofocus", "sniper"):
        results = _run(image_paths, bundle, tmp_path / f"{mode}.json", "--mode", mode, "--max-detections", "3")
        for path in image_paths:
            want = engine(path, mode=mode)
            assert len(want) > 3
            best = np.argsort(-want.scores, kind="stable")[:3]
            mine = [r for r in results if Path(r["image_id"]).name == path.name]  # ids are the paths
            assert mine
            np.testing.assert_allclose(sorted(r["score"] for r in mine), np.sort(want.scores[best]), atol=1e-6)
            np.testing.assert_allclose(sorted(map(tuple, (r["bbox"] for r in mine))),
                                       sorted(map(tuple, _as_coco_boxes(want.boxes[best]))), atol=1e-3)
    # Both options together: the best 3 of those above the threshold.
    want = engine(image_paths[0], mode="sniper")
    ordered = np.sort(want.scores)[::-1]
    threshold = float(ordered[1] + ordered[2]) / 2  # two above it
    results = _run(image_paths[:1], bundle, tmp_path / "both.json", "--mode", "sniper", "--max-detections", "3",
                   "--score-threshold", repr(threshold))
    assert len(results) == int((want.scores >= np.float32(threshold)).sum()) == 2


def test_single_scale_options(bundle, engine, image_paths, tmp_path, capsys):
    results = _run(image_paths[:1], bundle, tmp_path / "r.json", "--mode", "single", "--scale", "2")
    want = engine(image_paths[0], mode="single", scale=2)
    np.testing.assert_allclose([r["score"] for r in results], want.scores, atol=1e-6)
    base = [str(image_paths[0]), "--bundle", str(bundle.folder), "--backend", "onnxruntime"]
    # --mode single names its scale; the other modes take none.
    with pytest.raises(SystemExit) as e:
        main(base + ["--mode", "single"])
    assert e.value.code == 2 and "--mode single needs --scale" in capsys.readouterr().err
    for mode in ("autofocus", "sniper"):
        with pytest.raises(SystemExit) as e:
            main(base + ["--mode", mode, "--scale", "2"])
        assert e.value.code == 2 and f"--scale applies to --mode single only; --mode {mode}" in capsys.readouterr().err
    # A scale the bundle lacks is the engine's error, reported without a traceback (exit 2: nothing ran).
    assert main(base + ["--mode", "single", "--scale", "9", "--out", str(tmp_path / "x.json")]) == 2
    assert "scale" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("option,value", [("--score-threshold", "1.5"), ("--score-threshold", "-0.1"),
                                          ("--score-threshold", "nan"), ("--score-threshold", "high"),
                                          ("--max-detections", "0"), ("--max-detections", "2.5")])
def test_bad_option_values_are_named(bundle, image_paths, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(image_paths[0]), "--bundle", str(bundle.folder), option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and option in err and value in err


def test_default_bundle_search(tmp_path):
    checkout, cwd = tmp_path / "checkout", tmp_path / "here"
    cwd.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        cli_options.bundle_folder(None, checkout=checkout, cwd=cwd)
    message = str(e.value)
    for part in (str(checkout / "bundles" / "default"), str(cwd / "bundles" / "default"),
                 "export/build_engine.py", "--bundle"):
        assert part in message
    (cwd / "bundles" / "default").mkdir(parents=True)
    assert cli_options.bundle_folder(None, checkout=checkout, cwd=cwd) == cwd / "bundles" / "default"
    (checkout / "bundles" / "default").mkdir(parents=True)
    assert cli_options.bundle_folder(None, checkout=checkout, cwd=cwd) == checkout / "bundles" / "default"
    # An explicit --bundle is taken as given.
    assert cli_options.bundle_folder("elsewhere/b", checkout=checkout, cwd=cwd) == cli_options.Path("elsewhere/b")


def test_cli_finds_the_default_bundle_from_any_folder(bundle, image_paths, tmp_path, monkeypatch, capsys):
    want = _run(image_paths[:1], bundle, tmp_path / "want.json", "--mode", "sniper")
    args = [str(image_paths[0]), "--backend", "onnxruntime", "--mode", "sniper"]
    # The package's checkout holds the bundle: found from an unrelated folder.
    checkout = tmp_path / "checkout"
    (checkout / "bundles").mkdir(parents=True)
    (checkout / "bundles" / "default").symlink_to(bundle.folder, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(cli_options, "CHECKOUT", checkout)
    assert main(args + ["--out", str(tmp_path / "got.json")]) == 0
    assert json.loads((tmp_path / "got.json").read_text()) == want
    # No bundle anywhere: exit 2 (nothing ran) with how to make one, and no output file.
    monkeypatch.setattr(cli_options, "CHECKOUT", tmp_path / "no-checkout")
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "export/build_engine.py" in err and "--bundle" in err and "Traceback" not in err
    assert not (tmp_path / "none.json").exists()
