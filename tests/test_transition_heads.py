"""A focus head per transition (issue 21): the labels of the per-transition rule worked by hand, the
network's extra focus channels through ONNX export and bundle.json, the engine cutting each transition's
chips from its own head's channel, and bundles without them (the paper's single head) as before."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine_fixtures import TEST_BUCKETS, TEST_CANVASES, TEST_CHIP_PARAMS, TEST_SCALES, TEST_VALID_RANGES, val_images
from model.checkpoint import save_checkpoint
from model.config import load_config
from model.focus_refit import attach_transition_heads, label_bounds, map_labels, read_transition_heads
from model.labels import transition_bounds
from model.network import build_model, transition_focus_channels
from runtime import AutoFocusEngine
from runtime.bundle import BundleError, load_bundle, write_bundle

HEADS = [{"b_original": 75, "width": 8, "dilations": [1, 2, 4], "reduce": True, "init": "random"},
         {"b_original": 75, "width": 64, "dilations": [1], "reduce": False, "init": "paper"}]


# ------------------------------------------------------------------------------------------ labels

def test_transition_bounds_by_hand():
    # scale 1 of a 640 x 480 image (factor 0.8): objects under 75 px in the original are under 60 px there.
    assert transition_bounds(75, 0.8) == pytest.approx((5.0, 60.0, 60.0 * 90 / 64))
    # scale 2 (factor 5/3): 125 px, ignore band up to 175.78 px.
    assert transition_bounds(75, 5 / 3) == pytest.approx((5.0, 125.0, 125.0 * 90 / 64))
    for bad in ((0, 1.0), (75, 0.0), (-1, 1.0)):
        with pytest.raises(ValueError, match="positive"):
            transition_bounds(*bad)


@pytest.mark.parametrize("side_original,want", [
    (74.0, 1),      # 118.4 px at scale 2 (factor 1.6): under b' = 120, a positive
    (76.0, -1),     # 121.6 px: above b', inside the ignore band (to 168.75)
    (105.0, -1),    # 168.0 px: still inside the band
    (106.0, 0),     # 169.6 px: above the band, a negative
    (3.0, -1),      # 4.8 px: below the paper's a = 5 px (coarse-scale pixels), ignored
    (3.2, 1),       # 5.12 px: just above a, a positive
])
def test_transition_labels_each_side_of_each_boundary(side_original, want):
    """One square box per case, at the centre of a 640 x 640 image resized by 1.6 (scale 2), labelled by
    transition 2's rule (b_original 75): the label of the cell under its centre, worked by hand."""
    config = load_config()
    config["focus_labels"] = {**config["focus_labels"], "transitions": [{"b_original": 75}, {"b_original": 75}]}
    factor, size = 1.6, (1024, 1024)
    c = 320.0
    box = np.array([[c - side_original / 2, c - side_original / 2, c + side_original / 2, c + side_original / 2]],
                   np.float32)
    bounds = label_bounds(config, 1, factor, transitions=True)
    assert bounds == pytest.approx((5.0, 120.0, 168.75))
    labels = map_labels(box, factor, size, (64, 64), config, bounds)
    assert labels[int(c * factor) // 16, int(c * factor) // 16] == want
    # The paper's rule (b = 64, c = 90 at this scale) makes the 74 px object (118 px) a negative.
    paper = map_labels(box, factor, size, (64, 64), config)
    if side_original == 74.0:
        assert paper[int(c * factor) // 16, int(c * factor) // 16] == 0


def test_transition_heads_file_is_checked(tmp_path):
    network = load_config()["network"]
    f = tmp_path / "heads.json"
    f.write_text(json.dumps({"heads": HEADS}))
    assert read_transition_heads(f, 2, network) == HEADS
    f.write_text(json.dumps({"heads": [HEADS[0], None]}))  # transition 2 keeps the paper's head
    assert read_transition_heads(f, 2, network) == [HEADS[0], None]
    for heads, match in (([HEADS[0]], "expected 2 heads"), ([{**HEADS[0], "b_original": 0}, HEADS[1]], "b_original"),
                         ([{**HEADS[0], "init": "paper"}, HEADS[1]], "init paper needs"),
                         ([{**HEADS[0], "colour": 1}, HEADS[1]], "unknown keys")):
        f.write_text(json.dumps({"heads": heads}))
        with pytest.raises(ValueError, match=match):
            read_transition_heads(f, 2, network)
    f.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        read_transition_heads(f, 2, network)


def test_a_transition_without_its_own_head_reads_the_papers():
    """A null entry: that transition has no head (channel 1); the others take the channels after 0-1 in order."""
    spec = {"width": 8, "dilations": [1], "reduce": True}
    assert transition_focus_channels({"transition_heads": [spec, None]}) == [2, 1]
    assert transition_focus_channels({"transition_heads": [None, spec]}) == [1, 2]
    assert transition_focus_channels({"transition_heads": [spec, spec]}) == [2, 3]
    assert transition_focus_channels({}) == []
    config = load_config()
    model = build_model(config, 5)
    attach_transition_heads(model, config, [None, {**HEADS[0]}])
    assert model.transition_head(0) is None and model.transition_head(1) is model.transition_heads[0]
    assert config["network"]["transition_heads"][0] is None
    assert label_bounds(config, 0, 0.8, transitions=True) == (5.0, 64.0, 90.0)  # the paper's labels there
    with torch.no_grad():
        focus = model.deploy()(torch.zeros(1, 3, 64, 96))["focus"]
    assert focus.shape == (1, 3, 4, 6)
    rebuilt = build_model(config, 5)  # the config alone rebuilds it (a checkpoint's load)
    rebuilt.load_state_dict(model.state_dict())


# ------------------------------------------------------------------------------------------ export

@pytest.fixture(scope="module")
def heads_model():
    """The default network with random weights and two transition heads; transition 1's head says
    "everywhere" and transition 2's "nowhere" (their output biases), so the chips show which is read."""
    torch.manual_seed(0)
    config = load_config()
    config["classes"] = ["a", "b", "c", "d", "e"]
    model = build_model(config, len(config["classes"]))
    attach_transition_heads(model, config, HEADS)
    with torch.no_grad():
        model.transition_heads[0].layers[-1].bias.copy_(torch.tensor([-30.0, 30.0]))
        model.transition_heads[1].layers[-1].bias.copy_(torch.tensor([30.0, -30.0]))
    return model.deploy(), config


def test_paper_init_copies_the_paper_head(heads_model):
    model, _ = heads_model
    torch.testing.assert_close(model.transition_heads[1].layers[0].weight, model.focus_conv.weight, rtol=0, atol=0)


@pytest.fixture(scope="module")
def heads_bundle(heads_model, tmp_path_factory):
    from export.build_engine import build_bundle
    model, config = heads_model
    folder = tmp_path_factory.mktemp("heads")
    ckpt = folder / "heads.pt"
    save_checkpoint(ckpt, model, {k: v for k, v in config.items() if k != "classes"}, config["classes"])
    bundle = build_bundle(checkpoint=ckpt, out=folder / "bundle", buckets=TEST_BUCKETS, max_batch=2,
                          parity_shapes=((1, 3, 64, 96), (2, 3, 96, 64)), log=lambda *a: None)
    fields = {k: v for k, v in bundle.to_dict().items()
              if k not in ("classes", "buckets", "max_batch", "precision", "artefacts")}
    fields.update(scales=TEST_SCALES, valid_ranges=TEST_VALID_RANGES,
                  chip_params=[{**c, "box_score": None} for c in TEST_CHIP_PARAMS], canvases=TEST_CANVASES)
    write_bundle(folder / "bundle", classes=bundle.classes, buckets=bundle.buckets, max_batch=bundle.max_batch,
                 precision=bundle.precision, **fields)
    return load_bundle(folder / "bundle")


def test_bundle_names_the_focus_channels(heads_bundle):
    assert heads_bundle.focus_channels == [2, 3]
    focus = [o for o in heads_bundle.output_contract["outputs"] if o["name"] == "focus"][0]
    assert focus["shape"][1] == 4


def test_onnx_focus_channels_are_the_heads(heads_model, heads_bundle):
    """onnxruntime's "focus" against the eager heads, each applied on its own: channels 0-1 the paper's
    softmax, channel 1 + k transition k's FocusPixel probability."""
    model, _ = heads_model
    x = np.random.default_rng(0).normal(size=(2, 3, 96, 128)).astype(np.float32)
    session = ort.InferenceSession(str(heads_bundle.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    focus = session.run(["focus"], {"image": x})[0]
    with torch.no_grad():
        feats = model.focus_features(torch.from_numpy(x))
        want = [torch.softmax(model.focus_logits(feats), 1)[:, 0], torch.softmax(model.focus_logits(feats), 1)[:, 1]]
        want += [torch.softmax(h(feats), 1)[:, 1] for h in model.transition_heads]
    assert focus.shape == (2, 4, 6, 8)
    np.testing.assert_allclose(focus, torch.stack(want, 1).numpy(), atol=1e-4)


@pytest.mark.parametrize("packing", ["none", "canvas"])
def test_engine_cuts_each_transitions_chips_from_its_own_head(heads_bundle, packing):
    """Transition 1's head is 1 everywhere: scale 2 runs the whole image; transition 2's is 0 everywhere:
    no scale-3 chip. With focus_head="paper" the paper's (random) head decides instead."""
    engine = AutoFocusEngine(heads_bundle, backend="onnxruntime", packing=packing)
    for image, _, _ in val_images(2):
        h, w = image.shape[:2]
        engine(image)
        chips = [s["chips"] for s in engine.last_stats["scales"]]
        assert chips == [1, 1, 0], engine.last_stats["scales"]
        det = engine(image)
        assert det.chips[1].tolist() == [[0, 0, w, h]]
        engine(image, focus_head="paper", chip_params=[{"threshold": 1.1}, {"threshold": 0.0}])
        assert [s["chips"] for s in engine.last_stats["scales"]] == [1, 0, 0]
        # One head per transition chosen: transition 1's own (everywhere), the paper's at transition 2
        # with threshold 0 (everywhere): scale 3 runs the whole image too.
        engine(image, focus_head=["transition", "paper"], chip_params=[{}, {"threshold": 0.0}])
        assert [s["chips"] for s in engine.last_stats["scales"]] == [1, 1, 1]
        assert engine.params.focus_channels == (2, 3)  # a call's overrides do not stay


def test_bundle_without_transition_heads_reads_channel_1(bundle):
    """The shared random bundle has the paper's head only: no focus_channels in bundle.json, and every
    transition reads channel 1 (with or without focus_head)."""
    data = json.loads((bundle.folder / "bundle.json").read_text())
    assert "focus_channels" not in data or data["focus_channels"] == []
    image = val_images(1)[0][0]
    runs = []
    for head in ("transition", "paper"):
        engine = AutoFocusEngine(bundle, backend="onnxruntime", focus_head=head)
        assert engine.params.focus_channels == (1, 1)
        runs.append(engine(image))
    assert [len(c) for c in runs[0].chips] == [len(c) for c in runs[1].chips]
    np.testing.assert_array_equal(runs[0].boxes, runs[1].boxes)


def test_bad_focus_channels_and_focus_head(heads_bundle, tmp_path):
    import shutil
    folder = tmp_path / "b"
    shutil.copytree(heads_bundle.folder, folder)
    meta = folder / "bundle.json"
    data = json.loads(meta.read_text())
    for bad in ([2], [2, 4], [0, 2], ["2", 3]):
        meta.write_text(json.dumps({**data, "focus_channels": bad}))
        with pytest.raises(BundleError, match="focus_channels"):
            load_bundle(folder)
    for bad in ("both", ["paper"], ["paper", "mine"]):
        with pytest.raises(ValueError, match="focus_head"):
            AutoFocusEngine(heads_bundle, backend="onnxruntime", focus_head=bad)
    with pytest.raises(ValueError, match="focus_head"):  # two scales: one transition, the bundle has two heads
        AutoFocusEngine(heads_bundle, backend="onnxruntime", scales=TEST_SCALES[:2],
                        valid_ranges=TEST_VALID_RANGES[:2], chip_params=TEST_CHIP_PARAMS[:1])
