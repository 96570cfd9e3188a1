"""Your own detector (model/user_network.py, export/build_engine.py --network/--onnx): the contract
check names each fault; a focus head refit on a frozen foreign network; and the worked example: a
differently shaped network (tests/fixtures/tiny_detector.py) trained briefly on a generated COCO set
with three new classes, refit, built into a bundle and run by the engine in all three modes with the
same detections from onnxruntime and torch."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from export.build_engine import build_bundle_from_network, build_bundle_from_onnx, main as build_main
from fixtures.tiny_detector import build as build_tiny, wrong
from model import user_network as un
from model.config import load_config
from model.data import load_coco, read_image
from model.focus_refit import main as refit_main
from model.shapes import generate
from model.train import ChipDataset, build_positive_chips, collate, compute_losses
from runtime import AutoFocusEngine

torch.set_num_threads(2)

NETWORK = "fixtures.tiny_detector:build"
SIZES = ((96, 128), (128, 96), (80, 160))
# Small scales: tiny images, few small chips; the rules are the same at any scale.
USER_CONFIG = {"classes": None,  # filled from the COCO file
               "scales": [[64, 96], [128, 192], [224, 320]], "valid_ranges": [[24, None], [8, 40], [0, 20]],
               "chip_params": [{"threshold": 0.3, "dilation": 1, "min_size": 2},
                               {"threshold": 0.3, "dilation": 1, "min_size": 2}]}
PARITY = ((1, 3, 64, 96), (2, 3, 96, 128))


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Data, a briefly trained tiny detector (state_dict) and its config file."""
    root = tmp_path_factory.mktemp("own_model")
    ann = generate(root / "data", count=8, seed=5, sizes=SIZES)
    coco = load_coco(ann)
    cfg = dict(USER_CONFIG, classes=list(coco.classes))
    (root / "config.json").write_text(json.dumps(cfg))
    # A few training steps with the project's losses (a plumbing check, not accuracy).
    config = load_config(overrides={"chips": {"scales": [[-1, 96], [128, 192], [224, 320]],
                                              "valid_ranges": [[24, -1], [8, 40], [0, 20]], "chip_size": 96},
                                    "augment": {"hflip_prob": 0.0}})
    torch.manual_seed(0)
    net = build_tiny(num_classes=len(coco.classes))
    loader = DataLoader(ChipDataset(coco, build_positive_chips(coco, config)[:16], config, augment=False),
                        batch_size=4, shuffle=True, collate_fn=collate)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for images, targets in loader:
        logits, ltrb = net.raw(images)
        loss = compute_losses({"cls_logits": logits, "ltrb": ltrb}, targets, config)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    torch.save(net.state_dict(), root / "tiny.pt")
    return {"root": root, "ann": ann, "coco": coco, "config": root / "config.json", "weights": root / "tiny.pt"}


@pytest.fixture(scope="module")
def refit_file(example):
    out = example["root"] / "refit.pt"
    rc = refit_main(["--network", NETWORK, "--weights", str(example["weights"]), "--feature", "neck16",
                     "--config", str(example["config"]), "--train-annotations", str(example["ann"]),
                     "--out", str(out), "--holdout", "0.25", "--epochs", "3", "--lr", "0.01", "--quiet"])
    assert rc == 0
    return out


# ------------------------------------------------------------------------------- contract check

@pytest.mark.parametrize("fault, message", [
    ("missing_ltrb", r"missing output 'ltrb'"),
    ("scores_stride16", r"output 'scores' is 32x40 for a 256x320 input \(stride 8x8\)|output 'scores'.*stride is 8"),
    ("focus_stride8", r"output 'focus'.*stride is 16"),
    ("ltrb_channels", r"output 'ltrb' has 5 channels"),
    ("focus_channels", r"output 'focus' has 3 channels"),
])
def test_contract_check_names_each_fault(fault, message):
    with pytest.raises(un.ContractError, match=message):
        un.check_module(un.UserDetector(wrong(fault)), 3)


def test_contract_check_wrong_class_count_and_missing_focus():
    with pytest.raises(un.ContractError, match=r"output 'scores' has 4 channels; the config's 3 classes"):
        un.check_module(un.FocusHeadAttached(build_tiny(num_classes=4), "neck16"), 3)
    with pytest.raises(un.ContractError, match=r"missing output 'focus'.*focus_refit"):
        un.check_module(un.UserDetector(build_tiny()), 3)
    un.check_module(un.FocusHeadAttached(build_tiny(), "neck16"), 3)  # the sound one passes


def test_feature_errors_name_the_submodule():
    with pytest.raises(un.ContractError, match=r"no submodule 'nope'.*neck16"):
        un.FocusHeadAttached(build_tiny(), "nope")
    with pytest.raises(un.ContractError, match=r"'down8' gives a 8x12 map for a 64x96 input.*stride 16"):
        un.FocusHeadAttached(build_tiny(), "down8")


def test_build_cli_reports_a_contract_error(example, tmp_path, capsys):
    rc = build_main(["--network", NETWORK, "--weights", str(example["weights"]), "--config", str(example["config"]),
                     "--out", str(tmp_path / "b")])
    assert rc == 1 and "missing output 'focus'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_onnx_contract_check_names_a_missing_output(tmp_path):
    """An ONNX without `focus` is refused before anything is built."""
    from export.export_onnx import check_onnx_contract

    class TwoOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build_tiny()

        def forward(self, image):
            out = self.net(image)
            return out["scores"], out["ltrb"]

    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoOutputs().eval(), (torch.randn(1, 3, 64, 96),), str(path), input_names=["image"],
                      output_names=["scores", "ltrb"], dynamo=False,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}})
    with pytest.raises(un.ContractError, match=r"missing output\(s\) \['focus'\]"):
        check_onnx_contract(path, 3, PARITY)


# ----------------------------------------------------------------------- focus head refit, frozen

def test_refit_changes_only_the_head_on_a_frozen_detector(example, refit_file):
    before = torch.load(example["weights"], weights_only=True)
    state = torch.load(refit_file, weights_only=True)
    assert state["kind"] == un.REFIT_KIND and state["feature"] == "neck16" and state["network"] == NETWORK
    assert state["classes"] == list(example["coco"].classes)
    assert set(state["model"]) == set(before)
    assert all(torch.equal(before[k], state["model"][k]) for k in before)  # detector frozen
    assert state["focus_refit"]["images"] == 8 and state["focus_refit"]["epochs_run"] == 3
    head = un.load_user_network(NETWORK, refit_file)
    fresh = un.FocusHeadAttached(build_tiny(), "neck16")
    # The head was trained: the file's head differs from a freshly initialised one seeded alike.
    assert isinstance(head, un.FocusHeadAttached)
    assert not torch.equal(head.focus_out.weight, fresh.focus_out.weight)
    # Scores and ltrb are the detector's own.
    net = build_tiny(num_classes=3)
    net.load_state_dict(before)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = net.eval()(x), head(x)
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["ltrb"], b["ltrb"])
    assert b["focus"].shape == (1, 2, 4, 6)


def test_refit_head_learns_on_frozen_features(example):
    """A head refit on the frozen tiny detector's features ranks the FocusPixel-positive objects above
    the rest of the map better than at the start (model.focus_refit's held-out coverage)."""
    from model.focus_refit import collect, refit
    user = un.load_user_config(example["config"])
    model = un.load_user_network(NETWORK, example["weights"], feature="neck16")
    model.requires_grad_(False)
    for m in (model.focus_conv, model.focus_out):
        m.requires_grad_(True)
    data = collect(model, example["coco"], user, range(8), balance=1.0, progress=False)
    for d in data:
        d["perm"] = torch.randperm(len(d["labels"]))
    history = refit(model, data, data, epochs=25, minutes=2.0, lr=0.02, batch=4, progress=False)
    before, after = sum(history["epoch0_coverage"]), sum(history["best_coverage"])
    assert after < 0.8 * before, (before, after)
    assert all(p.grad is None for p in model.detector.parameters())


# --------------------------------------------------------------------------------- worked example

@pytest.fixture(scope="module")
def bundle(example, refit_file):
    return build_bundle_from_network(NETWORK, refit_file, example["config"], example["root"] / "bundle",
                                     parity_shapes=PARITY, log=lambda *_: None)


def test_bundle_carries_the_users_classes_and_scales(example, bundle):
    assert bundle.classes == list(example["coco"].classes)
    assert bundle.scales == USER_CONFIG["scales"] and bundle.valid_ranges == USER_CONFIG["valid_ranges"]
    assert {"model.onnx", "model_fp16.onnx", "model.pt2"} <= set(bundle.artefacts)
    assert bundle.build["network"] == NETWORK and bundle.build["focus_head"] == "neck16"


@pytest.mark.parametrize("mode", ["autofocus", "sniper", "single"])
def test_worked_example_same_detections_onnxruntime_and_torch(example, bundle, mode):
    ort_engine = AutoFocusEngine(bundle, backend="onnxruntime")
    torch_engine = AutoFocusEngine(bundle, backend="torch", device="cpu")
    kw = {"scale": 2} if mode == "single" else {}
    total = 0
    for info in example["coco"].images[:4]:
        image = read_image(info["path"])
        a, b = ort_engine(image, mode=mode, **kw), torch_engine(image, mode=mode, **kw)
        assert len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.labels.size == 0 or a.labels.max() < 3
        total += len(a.boxes)
    assert total > 0  # the comparison compared something


def test_onnx_route_gives_the_same_detections(example, bundle, tmp_path):
    """The bundle's model.onnx given back as a user's ONNX file builds a bundle (no model.pt2) whose
    detections equal the torch-built bundle's."""
    onnx_bundle = build_bundle_from_onnx(bundle.folder / "model.onnx", example["config"], tmp_path / "b",
                                         parity_shapes=PARITY, log=lambda *_: None)
    assert "model.pt2" not in onnx_bundle.artefacts and onnx_bundle.classes == bundle.classes
    a_engine = AutoFocusEngine(onnx_bundle, backend="onnxruntime")
    b_engine = AutoFocusEngine(bundle, backend="torch", device="cpu")
    image = read_image(example["coco"].images[0]["path"])
    a, b = a_engine(image), b_engine(image)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    np.testing.assert_array_equal(a.labels, b.labels)
