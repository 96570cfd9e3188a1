"""The network's outputs against docs/contract.md (names, shapes, ranges, in-graph peak suppression)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter

from model.config import load_config
from model.network import OUTPUT_NAMES, AutoFocusNet, build_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = AutoFocusNet(num_classes=5)
    # Random BN statistics and a positive class bias so that many cells score visibly above 0.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.cls_out.bias.fill_(0.0)
        model.cls_out.weight.normal_(0, 0.5)
    return model.deploy()


@pytest.mark.parametrize("n,h,w", [(1, 32, 32), (2, 64, 96), (1, 480, 640), (3, 128, 256)])
def test_contract_names_shapes_ranges(net, n, h, w):
    x = torch.randn(n, 3, h, w)
    with torch.no_grad():
        out = net(x)
    assert tuple(out) == OUTPUT_NAMES == ("scores", "ltrb", "focus")
    assert out["scores"].shape == (n, 5, h // 8, w // 8)
    assert out["ltrb"].shape == (n, 4, h // 8, w // 8)
    assert out["focus"].shape == (n, 2, h // 16, w // 16)
    for v in out.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
    s = out["scores"]
    assert (s >= 0).all() and (s <= 1).all() and (s > 0).any()
    assert (out["ltrb"] >= 0).all()
    f = out["focus"]
    assert (f >= 0).all() and (f <= 1).all()
    torch.testing.assert_close(f.sum(1), torch.ones(n, h // 16, w // 16), atol=1e-5, rtol=0)


def test_peak_suppression_matches_scipy_maximum_filter(net):
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        raw = torch.sigmoid(net(x, export=False)["cls_logits"]).numpy().astype(np.float64)
        scores = net(x)["scores"].numpy()
    # Reference: keep a cell iff it equals the max of its 3x3 window (borders: window clipped).
    peaks = maximum_filter(raw, size=(1, 1, 3, 3), mode="constant", cval=-np.inf)
    expected = np.where(raw >= peaks, raw, 0.0)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    kept = scores > 0
    assert 0 < kept.mean() < 0.5  # suppression actually removes most cells of a noisy map


def test_training_forward_gives_logits_and_deploy_matches_softmax(net):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        train_out = net(x, export=False)
        dep = net(x)
    assert set(train_out) == {"cls_logits", "ltrb", "focus_logits"}
    torch.testing.assert_close(dep["focus"], torch.softmax(train_out["focus_logits"], 1))
    torch.testing.assert_close(dep["ltrb"], train_out["ltrb"])


def test_ltrb_is_in_input_pixels_scale(net):
    # ltrb = 8 * exp(raw): with the regression weights zeroed every distance is exactly ltrb_base.
    model = AutoFocusNet(2).deploy()
    with torch.no_grad():
        model.reg_out.weight.zero_()
        model.reg_out.bias.zero_()
        out = model(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(out["ltrb"], torch.full((1, 4, 8, 8), 8.0))


@pytest.mark.parametrize("shape", [(1, 3, 65, 64), (1, 3, 64, 100), (1, 3, 16, 32)])
def test_non_multiple_of_32_is_a_value_error(net, shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(*shape))


def test_bad_input_types_and_shapes(net):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="image"):
        net(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="num_classes"):
        AutoFocusNet(0)


def test_build_model_from_default_config_is_small():
    model = build_model(load_config(), 5)
    n = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < n < 1.5e6  # DESIGN's CPU budget is for a ~0.8 M-parameter net


def _p3_cells(p3: torch.Tensor, kind: str) -> torch.Tensor:
    """p3 (N, C, 2h, 2w) onto the stride-16 cells, written with reshape/permute (not the model's ops)."""
    n, c, h, w = p3.shape
    blocks = p3.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (n, c, 2, 2, h/2, w/2)
    if kind == "p4+p3max":
        return blocks.amax(dim=(2, 3))
    return blocks.reshape(n, 4 * c, h // 2, w // 2)


@pytest.mark.parametrize("kind,channels", [("p4+p3max", 2 * 64), ("p4+p3fold", 5 * 64)])
def test_focus_head_on_p4_and_p3(kind, channels):
    """The head reads p4 with p3 brought onto each stride-16 cell (2x2 max or the 2x2 block as channels),
    computed here independently from the model's own p3 and p4; its output is the softmax of the
    paper's head on those features."""
    torch.manual_seed(0)
    model = AutoFocusNet(num_classes=3, focus_features=kind).deploy()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.focus_features(x)
        c3, p4 = model._trunk(x)
        p3 = model.smooth3(model.lat3(c3) + torch.nn.functional.interpolate(p4, scale_factor=2.0, mode="nearest"))
        torch.testing.assert_close(feats, torch.cat([p4, _p3_cells(p3, kind)], 1), rtol=0, atol=0)
        out = model(x)
        want = torch.softmax(model.focus_out(torch.relu(model.focus_conv(feats))), 1)
    assert feats.shape == (2, channels, 4, 6) and out["focus"].shape == (2, 2, 4, 6)
    torch.testing.assert_close(out["focus"], want)
    config = load_config(overrides={"network": {"focus_features": kind}})
    assert build_model(config, 5).focus_conv.in_channels == channels


def test_unknown_focus_features_are_refused():
    with pytest.raises(ValueError, match="focus_features"):
        AutoFocusNet(num_classes=3, focus_features="p3")
