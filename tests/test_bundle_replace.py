"""A bundle build that fails while swapping the new bundle in leaves the previous bundle in place,
loadable and running (export/build_engine.py replace_folder)."""
import os
import shutil

import pytest

from engine_fixtures import val_images
from export import build_engine
from runtime.bundle import load_bundle
from runtime.engine import AutoFocusEngine


@pytest.fixture
def previous(bundle, tmp_path):
    """A copy of the test bundle as the bundle in place, and a new build of it waiting beside it."""
    target = tmp_path / "bundle"
    shutil.copytree(bundle.folder, target)
    new = tmp_path / ".bundle.building"
    shutil.copytree(bundle.folder, new)
    (new / "NEW").write_text("the new build")
    return target, new


def _runs(folder):
    det = AutoFocusEngine(load_bundle(folder), backend="onnxruntime", device="cpu")(val_images(1)[0][0])
    return len(det) >= 0 and det.boxes.shape[1] == 4


@pytest.mark.parametrize("failing_call", [1, 2])  # the rename of the old bundle aside, or of the new one in
def test_a_failed_swap_leaves_the_previous_bundle_usable(previous, monkeypatch, failing_call):
    target, new = previous
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_call:
            raise OSError("rename failed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        build_engine.replace_folder(new, target)
    monkeypatch.undo()
    assert not (target / "NEW").exists()  # the previous bundle, not a mix
    assert _runs(target)
    assert new.exists()  # the new build is still there (build_bundle deletes it)


def test_the_swap_puts_the_new_bundle_in_place_and_drops_the_old(previous):
    target, new = previous
    build_engine.replace_folder(new, target)
    assert (target / "NEW").exists() and not new.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["bundle"]
    assert _runs(target)


def test_a_build_killed_between_the_renames_is_restored(previous):
    target, _ = previous
    os.replace(target, target.parent / ".bundle.previous")  # what a kill after the first rename leaves
    build_engine.restore_interrupted(target)
    assert _runs(target)
