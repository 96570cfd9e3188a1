"""python -m runtime over collections (runtime/collection.py, the single-process path): the input kinds,
results equal to the engine's image by image, the failures file, shard resume after a killed run, outputs
checked before the first image, and the five CLI failures of issue 23 (each fails on the CLI before it)."""
import json
import os
import sys
import time

import cv2
import numpy as np
import pytest

from collection_fixtures import cli_command, kill_after_shards, run_cli, shard_records, small_images, write_images
from engine_fixtures import val_images
from runtime import AutoFocusEngine
from runtime.__main__ import main
from runtime.drawings import drawing_name
from runtime.inputs import CollectionError, collect


def _main(bundle, *args):
    """The CLI in this process; sniper unless args say otherwise (the test bundle's scales find nothing in
    autofocus mode on small images, and these tests want detections to compare)."""
    return main(["--mode", "sniper", *map(str, args), "--bundle", str(bundle.folder), "--backend", "onnxruntime",
                 "--no-progress"])


def _expected(bundle, paths_and_ids, mode="sniper"):
    """COCO entries of each image, straight from the engine (input order)."""
    engine = AutoFocusEngine(bundle, backend="onnxruntime")
    out = []
    for path, image_id in paths_and_ids:
        out += engine(path, mode=mode).to_coco(image_id)
    return out


def _same_entries(got, want):
    assert want, "nothing to compare: the reference found no detections"
    assert [(e["image_id"], e["category_id"]) for e in got] == [(e["image_id"], e["category_id"]) for e in want]
    np.testing.assert_allclose([e["bbox"] + [e["score"]] for e in got], [e["bbox"] + [e["score"]] for e in want],
                               rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_images(100)


# ------------------------------------------------------------------------------------ input kinds

def test_input_kinds(tmp_path, small, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "photos", small[:2], ["a.png", "b.jpg"])
    write_images(tmp_path / "photos" / "deeper" / "deepest", small[2:3], ["c.tif"])
    (tmp_path / "photos" / "notes.md").write_text("not an image")
    listed = write_images(tmp_path / "elsewhere", small[3:5], ["x.png", "y.png"])
    # Folder: recursive, image suffixes only, sorted; ids are the paths as found.
    found = [os.path.relpath(os.path.join(d, f)) for d, _, files in os.walk("photos") for f in files
             if not f.endswith(".md")]
    assert [(i.id, i.path) for i in collect(["photos"]).items] == [(p, p) for p in sorted(found)]
    # Glob (recursive **), and a folder and a glob naming the same file: read once.
    assert [i.id for i in collect(["photos/**/*.tif"]).items] == ["photos/deeper/deepest/c.tif"]
    assert [i.id for i in collect(["photos", "photos/*.png"]).items] == [i.id for i in collect(["photos"]).items]
    # A list of paths: relative to the list's folder, blank lines and comments skipped.
    (tmp_path / "elsewhere" / "list.txt").write_text("x.png\n\n# skipped\n" + str(listed[1]) + "\n")
    assert [i.path for i in collect(["elsewhere/list.txt"]).items] == ["elsewhere/x.png", str(listed[1])]
    # A COCO file: its ids, file_name under its folder or its images/ folder (as model.synth writes).
    write_images(tmp_path / "split" / "images", small[5:7], ["000000.jpg", "000001.jpg"])
    (tmp_path / "split" / "annotations.json").write_text(json.dumps(
        {"images": [{"id": 41, "file_name": "000000.jpg"}, {"id": 42, "file_name": "000001.jpg"}],
         "categories": [{"id": 7, "name": "car"}]}))
    coco = collect(["split/annotations.json"])
    assert [(i.id, i.path) for i in coco.items] == [(41, "split/images/000000.jpg"), (42, "split/images/000001.jpg")]
    assert coco.categories == {"car": 7}
    # Names that name nothing are refused before anything runs, each with the name.
    for spec, message in (("missing.png", "missing.png: no such file or folder"),
                          ("photos/*.gif", r"photos/\*.gif: no file matches"),
                          ("photos/deeper/../../empty", "no such file")):
        with pytest.raises(CollectionError, match=message):
            collect(["photos", spec])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectionError, match="empty: folder holds no image files"):
        collect(["empty"])
    (tmp_path / "bad.json").write_text('{"images": [{"file_name": "a.png"}]}')
    with pytest.raises(CollectionError, match="bad.json: a COCO file needs 'images', each with 'id'"):
        collect(["bad.json"])


def test_nonexistent_input_is_refused_before_the_engine_runs(bundle, tmp_path, small, capsys):
    paths = write_images(tmp_path, small[:1])
    out = tmp_path / "dets.json"
    assert _main(bundle, paths[0], tmp_path / "missing.png", "--out", out) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "dets.json.parts").exists()


def test_folder_glob_list_and_coco_inputs_give_the_engines_results(bundle, tmp_path, small):
    paths = write_images(tmp_path / "in", small[:6])
    (tmp_path / "list.txt").write_text("\n".join(p.name for p in paths[4:]))
    os.replace(tmp_path / "list.txt", tmp_path / "in" / "list.txt")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 100 + i, "file_name": f"in/{p.name}"} for i, p in enumerate(paths)],
                                "categories": [{"id": 10 + i, "name": c} for i, c in enumerate(bundle.classes)]}))
    out = tmp_path / "dets.json"
    assert _main(bundle, tmp_path / "in" / "img_000.png", tmp_path / "in" / "img_00[12].png", tmp_path / "in",
                 tmp_path / "in" / "list.txt", "--out", out, "--mode", "sniper") == 0
    ids = [str(p) for p in paths]  # each file once, in the order first named
    _same_entries(json.loads(out.read_text()), _expected(bundle, zip(paths, ids), "sniper"))
    assert json.loads((tmp_path / "dets.failures.json").read_text()) == []
    # COCO input: its image ids, and category ids by class name.
    out2 = tmp_path / "coco_dets.json"
    assert _main(bundle, coco, "--out", out2, "--mode", "sniper") == 0
    want = _expected(bundle, [(p, 100 + i) for i, p in enumerate(paths)], "sniper")
    for e in want:
        e["category_id"] += 9
    _same_entries(json.loads(out2.read_text()), want)


# ------------------------------------------------------------------------------------ failures

def test_three_corrupt_files_among_a_hundred(bundle, tmp_path, small, capsys):
    paths = write_images(tmp_path / "in", small[:97])
    corrupt = [tmp_path / "in" / "empty.png", tmp_path / "in" / "noise.jpg", tmp_path / "in" / "truncated.png"]
    corrupt[0].write_bytes(b"")
    corrupt[1].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    corrupt[2].write_bytes(paths[0].read_bytes()[:40])  # the PNG header and no image data
    out = tmp_path / "dets.json"
    assert _main(bundle, tmp_path / "in", "--out", out, "--mode", "sniper", "--shard-size", "16") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("97 of 100 images done") and "3 failed" in err[-1]
    failures = json.loads((tmp_path / "dets.failures.json").read_text())
    assert sorted(f["path"] for f in failures) == sorted(map(str, corrupt))
    assert all("not a readable image" in f["reason"] for f in failures)
    results = json.loads(out.read_text())
    assert {e["image_id"] for e in results} == set(map(str, paths))
    records = shard_records(tmp_path / "dets.json.parts")
    assert sorted(r["path"] for r in records if "results" in r) == sorted(map(str, paths))


def test_broken_file_among_others_keeps_the_others_results(bundle, tmp_path, small, capsys):
    """Issue 23, CLI failure 1: a broken file stopped the run and lost the results made before it."""
    a, c = write_images(tmp_path, small[:2], ["a.jpg", "c.jpg"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out, viz = tmp_path / "dets.json", tmp_path / "viz"
    assert _main(bundle, a, broken, c, "--out", out, "--viz", viz) != 0
    _same_entries(json.loads(out.read_text()), _expected(bundle, [(a, str(a)), (c, str(c))]))
    assert [f["path"] for f in json.loads((tmp_path / "dets.failures.json").read_text())] == [str(broken)]
    assert len(list(viz.glob("*.png"))) == 2
    assert "1 failed" in capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------ never overwrite

def test_viz_folder_holding_the_inputs_leaves_them_alone(bundle, tmp_path, small):
    """Issue 23, CLI failure 2: --viz DIR holding photo.png (RGBA) replaced it with the drawing."""
    rgba = np.dstack([small[0], np.full(small[0].shape[:2], 200, np.uint8)])
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), rgba)
    before = photo.read_bytes()
    assert _main(bundle, photo, "--out", tmp_path / "dets.json", "--viz", tmp_path) == 0
    assert photo.read_bytes() == before
    drawing = tmp_path / drawing_name(collect([photo]).items[0])
    drawn = cv2.imread(str(drawing), cv2.IMREAD_UNCHANGED)
    assert drawing != photo and drawn.shape == small[0].shape


@pytest.mark.parametrize("where", ["missing_folder", "a_folder"])
def test_bad_out_is_refused_before_the_first_image(bundle, tmp_path, small, where, capsys):
    """Issue 23, CLI failure 3: --out into a missing folder or onto a folder failed after all the work."""
    paths = write_images(tmp_path / "in", small[:3])
    out = tmp_path / "nowhere" / "dets.json" if where == "missing_folder" else tmp_path / "in"
    viz = tmp_path / "viz"
    assert _main(bundle, *paths, "--out", out, "--viz", viz) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and ("does not exist" in err or "is a folder" in err)
    assert not viz.exists()  # refused before the first image: no drawing made


def test_out_onto_an_input_is_refused(bundle, tmp_path, small, capsys):
    paths = write_images(tmp_path, small[:2])
    before = paths[1].read_bytes()
    assert _main(bundle, *paths, "--out", paths[1]) == 2
    assert "is one of the input images" in capsys.readouterr().err
    assert paths[1].read_bytes() == before


def test_same_file_name_in_two_folders_gets_two_ids_and_two_drawings(bundle, tmp_path, small):
    """Issue 23, CLI failure 4: same file name in two folders -> one image_id, one drawing overwritten."""
    first = write_images(tmp_path / "day1", small[:1], ["cam.png"])[0]
    second = write_images(tmp_path / "day2", small[1:2], ["cam.png"])[0]
    out, viz = tmp_path / "dets.json", tmp_path / "viz"
    assert _main(bundle, first, second, "--out", out, "--viz", viz) == 0
    results = json.loads(out.read_text())
    assert {e["image_id"] for e in results} == {str(first), str(second)}
    _same_entries(results, _expected(bundle, [(first, str(first)), (second, str(second))]))
    drawings = sorted(viz.glob("*.png"))
    assert len(drawings) == 2
    shapes = {cv2.imread(str(d)).tobytes() for d in drawings}
    assert len(shapes) == 2  # two different drawings, neither overwriting the other


def test_folder_given_as_input_runs_its_images(bundle, tmp_path, small, capsys):
    """Issue 23, CLI failure 5: a folder given as an image said 'image file not found'."""
    paths = write_images(tmp_path / "photos", small[:3])
    out = tmp_path / "dets.json"
    assert _main(bundle, tmp_path / "photos", "--out", out) == 0
    assert "not found" not in capsys.readouterr().err
    _same_entries(json.loads(out.read_text()), _expected(bundle, [(p, str(p)) for p in paths]))


# ------------------------------------------------------------------------------------ resume

def test_killed_run_restarted_gives_the_uninterrupted_file(bundle, tmp_path):
    """A run killed (SIGKILL) after a few shards, then run again: the final file equals an uninterrupted
    run's byte for byte, every image in exactly one shard, and the re-run skipped the finished ones."""
    images = [im for im, _, _ in val_images(20)]
    write_images(tmp_path / "in", images)
    args = [tmp_path / "in", "--bundle", bundle.folder, "--backend", "onnxruntime", "--shard-size", "2"]
    whole = run_cli(*args, "--out", tmp_path / "whole.json")
    assert whole.returncode == 0, whole.stderr
    assert len({e["image_id"] for e in json.loads((tmp_path / "whole.json").read_text())}) == 20
    out, work = tmp_path / "dets.json", tmp_path / "dets.json.parts"
    kill_after_shards(cli_command(*args, "--out", out), work)
    done_before = len(shard_records(work))
    assert 4 <= done_before < 20 and not out.exists(), "the run was not killed halfway"
    again = run_cli(*args, "--out", out)
    assert again.returncode == 0, again.stderr
    assert f"{done_before} of 20 images already done" in again.stderr
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes()
    ids = [r["id"] for r in shard_records(work)]
    assert sorted(ids) == sorted(str(p) for p in (tmp_path / "in").iterdir())  # none twice, none missing


def test_rerun_with_other_settings_is_refused(bundle, tmp_path, small, capsys):
    paths = write_images(tmp_path, small[:2])
    out = tmp_path / "dets.json"
    assert _main(bundle, *paths, "--out", out, "--mode", "sniper") == 0
    before = out.read_bytes()
    assert _main(bundle, *paths, "--out", out, "--mode", "single", "--scale", "1") == 2
    assert "holds results made with other settings (mode" in capsys.readouterr().err
    assert out.read_bytes() == before


# ------------------------------------------------------------------------------------ bad arguments

def test_bad_arguments_fail_fast_with_a_clear_error(bundle, tmp_path, small, capsys, monkeypatch):
    paths = write_images(tmp_path, small[:1])
    out = tmp_path / "dets.json"
    with pytest.raises(SystemExit) as exit_:
        _main(bundle, paths[0], "--out", out, "--ray", "auto", "--workers", "0")
    assert exit_.value.code == 2 and "--workers: expected a positive integer, got 0" in capsys.readouterr().err
    # A Ray address where no cluster listens: refused within seconds (ray.init alone retries for a minute).
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        start = time.monotonic()
        assert _main(bundle, paths[0], "--out", out, "--ray", f"127.0.0.1:{port}") == 2
        assert time.monotonic() - start < 20
    assert f"--ray 127.0.0.1:{port}: no Ray cluster answers there" in capsys.readouterr().err
    assert _main(bundle, paths[0], "--out", out, "--ray", "somewhere") == 2
    assert "expected 'auto' or HOST:PORT" in capsys.readouterr().err
    # Without the extra: the error names it.
    monkeypatch.setitem(sys.modules, "ray", None)
    assert _main(bundle, paths[0], "--out", out, "--ray", "auto") == 2
    assert "pip install 'autofocus-trt[ray]'" in capsys.readouterr().err
    assert not out.exists()
