"""benchmarks/: fps, sweep, peers (SAHI) and visualize on a tiny set (2 generated images, a random-weight
bundle with small scales), the Pareto/budget logic on hand-made points, and the pixel accounting against
docs/design.md's resize rule written out here. Timings are never asserted, only that they are well-formed."""
from __future__ import annotations

import json
import math
import shutil
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import chip_coverage, common, fps, peers, sweep, visualize
from benchmarks import hotspots
from benchmarks import settings as batching_settings
from engine_fixtures import TEST_CHIP_PARAMS, TEST_SCALES, shared_bundle

SCALES = TEST_SCALES

SAHI_MISSING = peers.sahi_unavailable_reason()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(bundle folder, annotations path, image paths): the session's random test bundle (small scales,
    tests/engine_fixtures.py) and 2 generated val images."""
    from model.synth import generate_split
    bundle = shared_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("bench")
    annotations = generate_split(root / "val", seed=2026, count=2, split="val")
    images = sorted((root / "val" / "images").iterdir())
    return str(bundle.folder), str(annotations), images


def whole_image_pixels(h, w, scale):
    """docs/design.md: factor = min(min_side / short side, max_side / long side); sides rounded half up."""
    f = min(scale[0] / min(h, w), scale[1] / max(h, w))
    return math.floor(h * f + 0.5) * math.floor(w * f + 0.5)


# ------------------------------------------------------------------------------------ fps

def test_fps_main_table_json_and_pixel_accounting(tiny, tmp_path, capsys):
    bundle, annotations, images = tiny
    out = tmp_path / "fps.json"
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "1", "--json", str(out),
                     "--no-progress"]) == 0
    table = capsys.readouterr().out
    names = ["autofocus", "sniper", "single1", "single2", "single3"]
    for name in names:
        assert any(line.startswith(name) for line in table.splitlines()), name
    record = json.loads(out.read_text())
    for key in ("machine", "versions", "backend", "device", "images", "repeats", "batch", "modes"):
        assert key in record
    assert record["machine"]["cores"] >= 1 and record["images"] == 2
    assert list(record["modes"]) == names
    for r in record["modes"].values():
        for key in ("images_per_s", "speedup_vs_sniper", "pixels_per_image", "padded_pixels_per_image",
                    "pixels_vs_sniper", "postprocess_share", "postprocess_ms_per_image", "AP", "AP50", "APs", "APm",
                    "APl"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        assert r["images_per_s"] > 0 and 0 <= r["postprocess_share"] <= 1 and 0 <= r["AP"] <= 100
        assert r["padded_pixels_per_image"] >= r["pixels_per_image"]
    # Pixels against the resize rule, computed here from the image sizes alone.
    sizes = [cv2.imread(str(p)).shape[:2] for p in images]
    per_scale = [np.mean([whole_image_pixels(h, w, s) for h, w in sizes]) for s in SCALES]
    for k, expected in enumerate(per_scale):
        assert record["modes"][f"single{k + 1}"]["pixels_per_image"] == pytest.approx(expected)
    assert record["modes"]["sniper"]["pixels_per_image"] == pytest.approx(sum(per_scale))
    # Per scale: sniper's are the resize rule's, each single scale's only its own; AutoFocus's scale 1
    # is the whole image and its finer scales at most sniper's.
    total = sum(per_scale)
    np.testing.assert_allclose(record["modes"]["sniper"]["pixels_vs_sniper_by_scale"],
                               [p / total for p in per_scale])
    for k in range(len(SCALES)):
        want = [per_scale[k] / total if j == k else 0.0 for j in range(len(SCALES))]
        np.testing.assert_allclose(record["modes"][f"single{k + 1}"]["pixels_vs_sniper_by_scale"], want)
    auto_by_scale = record["modes"]["autofocus"]["pixels_per_image_by_scale"]
    assert auto_by_scale[0] == pytest.approx(per_scale[0])
    assert all(a <= p + 1e-6 for a, p in zip(auto_by_scale, per_scale))
    assert sum(auto_by_scale) == pytest.approx(record["modes"]["autofocus"]["pixels_per_image"])
    assert "px/sniper s2" in table
    assert record["modes"]["sniper"]["pixels_vs_sniper"] == 1.0
    assert record["modes"]["sniper"]["speedup_vs_sniper"] == 1.0
    # AutoFocus always runs scale 1 whole, and never more than the pyramid.
    auto = record["modes"]["autofocus"]["pixels_per_image"]
    assert per_scale[0] <= auto + 1e-6
    # One image a call: a single scale is one network call an image, sniper one a scale, AutoFocus one at
    # scale 1 and one per chip shape of each finer scale.
    for k in range(len(SCALES)):
        assert record["modes"][f"single{k + 1}"]["network_calls_per_image"] == 1.0
    assert record["modes"]["sniper"]["network_calls_per_image"] == float(len(SCALES))
    auto_chips = record["modes"]["autofocus"]["chips_per_image"]
    assert 1.0 <= record["modes"]["autofocus"]["network_calls_per_image"] <= sum(auto_chips) + 1e-9
    assert "calls/img" in table


def test_fps_batch_and_mode_subset(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    out = tmp_path / "fps.json"
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "2", "--batch", "2",
                     "--modes", "autofocus,single2", "--limit", "2", "--json", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert list(record["modes"]) == ["autofocus", "single2"] and record["batch"] == 2
    assert record["modes"]["autofocus"]["speedup_vs_sniper"] is None  # no sniper run: no ratio
    assert len(record["modes"]["autofocus"]["seconds_per_repeat"]) == 2


def test_fps_padding_options_reach_the_engine(tiny, tmp_path):
    bundle, annotations, _ = tiny
    out = tmp_path / "fps.json"
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "1", "--modes", "autofocus",
                     "--padding", "shared", "--chips-on-host", "yes", "--max-batch", "1", "--batch", "2",
                     "--keep-uncovered", "no", "--json", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["padding"] == "shared" and record["chips_on_host"] is True and record["max_batch"] == 1
    assert record["keep_uncovered"] is False
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--max-batch", "0"]) == 2


def test_hotspots_prints_the_engines_own_functions(tiny, capsys):
    bundle, annotations, _ = tiny
    assert hotspots.main(["--bundle", bundle, "--annotations", annotations, "--limit", "2", "--batch", "2",
                          "--mode", "sniper", "--top", "40"]) == 0
    out = capsys.readouterr().out
    assert "2 images, sniper, batch 2" in out and "ms an image" in out
    assert "cascade.py" in out and "tottime" in out  # cProfile's table reaches into the cascade
    assert hotspots.main(["--bundle", "/nonexistent"]) == 2


def test_settings_compares_batching_settings_on_one_engine(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    out = tmp_path / "settings.json"
    assert batching_settings.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "1",
                          "--json", str(out)]) == 0
    assert "ms/image" in capsys.readouterr().out
    r = json.loads(out.read_text())["settings"]
    assert list(r) == ["sniper", "sniper_shared", "autofocus_bucket", "autofocus_bucket_host",
                       "autofocus_shared", "autofocus_shared_host"]
    # On the CPU chips_on_host changes nothing; shared padding runs the same real pixels, padded no less.
    for key in ("AP", "pixels_per_image", "padded_pixels_per_image"):
        assert r["autofocus_bucket"][key] == r["autofocus_bucket_host"][key], key
    assert r["autofocus_shared"]["pixels_per_image"] == r["autofocus_bucket"]["pixels_per_image"]
    assert r["autofocus_shared"]["padded_pixels_per_image"] >= r["autofocus_bucket"]["padded_pixels_per_image"]
    assert all(v["speedup_vs_sniper"] is not None for v in r.values())


def test_fps_parse_modes_and_errors(tiny, capsys):
    assert [n for n, _, _ in fps.parse_modes("sniper,single", 3)] == ["sniper", "single1", "single2", "single3"]
    assert fps.parse_modes("single2", 3) == [("single2", "single", {"scale": 2})]
    for bad in ("fast", "single4", "single0", "sniper,sniper", ","):
        with pytest.raises(ValueError, match="modes"):
            fps.parse_modes(bad, 3)
    bundle, annotations, _ = tiny
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--modes", "turbo"]) == 2
    assert "modes" in capsys.readouterr().err
    assert fps.main(["--bundle", "/nonexistent/bundle", "--annotations", annotations]) == 2
    assert "build_engine.py" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Pareto / budget

def P(name, cost, gain):
    return {"name": name, "pixels_ratio": cost, "AP": gain}


def test_pareto_front_hand_made():
    points = [P("a", 0.2, 30.0), P("dominated_by_a", 0.25, 29.0), P("b", 0.3, 35.0), P("same_cost_worse", 0.3, 33.0),
              P("a_twin", 0.2, 30.0), P("same_gain_dearer", 1.0, 35.0), P("c", 0.5, 40.0), P("cheaper_worse", 0.1, 5.0)]
    front = sweep.pareto_front(points)
    assert [p["name"] for p in front] == ["cheaper_worse", "a", "a_twin", "b", "c"]
    assert sweep.pareto_front([]) == []
    assert sweep.pareto_front([P("x", 1.0, 1.0)])[0]["name"] == "x"


def _front_by_sweep(points):
    """Reference: sort by cost (then gain, high first); keep a point when its gain beats every cheaper
    point's, or when it equals the last kept point exactly (a tie)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    kept, best = [], -math.inf
    for i in order:
        c, g = points[i]
        if g > best or (kept and points[kept[-1]] == (c, g)):
            kept.append(i)
            best = max(best, g)
    return kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0]), st.sampled_from([10.0, 20.0, 25.0, 30.0])),
                max_size=12))
def test_pareto_front_against_a_sweep_reference(raw):
    points = [P(str(i), c, g) for i, (c, g) in enumerate(raw)]
    assert [int(p["name"]) for p in sweep.pareto_front(points)] == _front_by_sweep(raw)


def test_best_within_budget():
    points = [P("cheap", 0.1, 20.0), P("mid", 0.28, 31.0), P("mid_dearer_tie", 0.3, 31.0), P("over", 0.45, 40.0)]
    assert sweep.best_within_budget(points, 0.3)["name"] == "mid"       # tie on AP: the cheaper
    assert sweep.best_within_budget(points, 0.3000001)["name"] == "mid"
    assert sweep.best_within_budget(points, 0.2)["name"] == "cheap"
    assert sweep.best_within_budget(points, 0.1)["name"] == "cheap"     # the budget itself is allowed
    assert sweep.best_within_budget(points, 1.0)["name"] == "over"
    assert sweep.best_within_budget(points, 0.05) is None               # nothing fits: None
    assert sweep.best_within_budget([], 0.5) is None
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget"):
            sweep.best_within_budget(points, bad)
    with pytest.raises(TypeError, match="budget"):
        sweep.best_within_budget(points, "0.3")


def test_cheapest_within_loss():
    points = [P("cheap", 0.1, 60.0), P("mid", 0.3, 70.5), P("mid_tie_better", 0.3, 70.8), P("dear", 0.6, 71.0)]
    assert sweep.cheapest_within_loss(points, 71.0, 0.5)["name"] == "mid_tie_better"  # same cost: more AP
    assert sweep.cheapest_within_loss(points, 71.0, 0.0)["name"] == "dear"            # the loss itself is allowed
    assert sweep.cheapest_within_loss(points, 71.0, 11.0)["name"] == "cheap"
    assert sweep.cheapest_within_loss(points, 75.0, 1.0) is None                      # none close enough
    assert sweep.cheapest_within_loss([], 71.0, 1.0) is None
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_loss"):
            sweep.cheapest_within_loss(points, 71.0, bad)


def test_grid_parsing():
    base = [dict(p) for p in TEST_CHIP_PARAMS]
    settings_ = [s["chip_params"] for s in sweep.grid_settings(sweep.parse_grid(sweep.DEFAULT_GRID, 2), base)]
    assert len(settings_) == 4 * 4 * 2
    combos = {(s[0]["threshold"], s[1]["threshold"], s[0]["dilation"], s[1]["dilation"]) for s in settings_}
    assert len(combos) == 32 and all(d1 == d2 for *_, d1, d2 in combos)   # "d" sets both transitions
    assert all(s[0]["min_size"] == 3 and s[1]["min_size"] == 4 for s in settings_)  # k kept from the bundle
    # Transition 1 varies slowest: settings sharing it are adjacent (scale-2 reuse in the sweep).
    firsts = [(s[0]["threshold"], s[0]["dilation"]) for s in settings_]
    assert all(firsts.count(f) == 4 for f in firsts)
    assert sum(firsts[i] != firsts[i + 1] for i in range(31)) == 7  # 8 runs of 4
    assert sweep.parse_grid("k1=12,16", 2) == {((0,), "min_size"): [12, 16]}
    assert len(sweep.grid_settings(sweep.parse_grid("d1=1,3;d2=1,3", 2), base)) == 4  # untied: 2 axes
    assert sweep.parse_grid("s2=none,0.5", 2) == {((1,), "box_score"): [None, 0.5]}
    guided = sweep.grid_settings(sweep.parse_grid("s2=none,0.5", 2), base)
    assert [s["chip_params"][1].get("box_score") for s in guided] == [None, 0.5]
    assert sweep.label(guided[1]).endswith("k2=4 s2=0.5") and "s2" not in sweep.label(guided[0])
    assert sweep.parse_grid("m1=130,none", 2) == {((0,), "box_max"): [130.0, None]}
    capped = sweep.grid_settings(sweep.parse_grid("m1=130", 2), base)
    assert capped[0]["chip_params"][0]["box_max"] == 130.0 and " m1=130 " in sweep.label(capped[0])
    assert sweep.parse_grid("r2=touching,cheaper", 2) == {((1,), "merge"): ["touching", "cheaper"]}
    rules = sweep.grid_settings(sweep.parse_grid("r2=touching,cheaper", 2), base)
    assert sweep.label(rules[1]).endswith(" r2=cheaper") and "r2" not in sweep.label(rules[0])
    for bad in ("x1=1", "t3=0.1", "t1=", "d1=a", "t1=0.1;=3", "d=1,3;d2=5", "s2=high", "m1=big", "r1=any",
                "c=570", "c=608x570", "c=0x512", "c=axb", "c1=570x608", "c=nanxinf", "c=570x608;c=none"):
        with pytest.raises(ValueError, match="grid"):
            sweep.parse_grid(bad, 2)


def test_grid_coarse_scale_axis():
    """c is one axis for the whole cascade, walked first (scale 1 then runs once per value), kept by
    every setting where the grid says nothing, and shown in the label."""
    base = [dict(p) for p in TEST_CHIP_PARAMS]
    assert sweep.parse_grid("c=570x608,none", 2) == {((), "coarse_scale"): [[570.0, 608.0], None]}
    grid = sweep.parse_grid("t1=0.1,0.2;c=540x576,570x608;t2=0.5", 2)
    settings_ = sweep.grid_settings(grid, base)
    assert [s["coarse_scale"] for s in settings_] == [[540.0, 576.0]] * 2 + [[570.0, 608.0]] * 2
    assert [s["chip_params"][0]["threshold"] for s in settings_] == [0.1, 0.2, 0.1, 0.2]
    assert all(s["chip_params"][1]["threshold"] == 0.5 for s in settings_)
    assert sweep.label(settings_[0]).startswith("c=540x576 t1=0.1 ")
    kept = sweep.grid_settings(sweep.parse_grid("t1=0.1", 2), base, coarse_scale=(540, 576))
    assert kept[0]["coarse_scale"] == [540.0, 576.0]
    none = sweep.grid_settings(sweep.parse_grid("c=none", 2), base, coarse_scale=(540, 576))
    assert none[0]["coarse_scale"] is None and not sweep.label(none[0]).startswith("c=")
    assert base == [dict(p) for p in TEST_CHIP_PARAMS]  # the bundle's list is not changed


# ------------------------------------------------------------------------------------ sweep

def test_sweep_main_outputs(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    png, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    assert sweep.main(["--bundle", bundle, "--annotations", annotations, "--grid", "t1=0.02,0.99;t2=0.2",
                       "--budget", "0.5", "--max-loss", "100", "--png", str(png), "--json", str(out),
                       "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "sniper" in text and "cheapest within 100 AP" in text
    image = cv2.imread(str(png))
    assert image is not None and image.ndim == 3 and image.shape[0] > 100
    record = json.loads(out.read_text())
    assert record["sniper"]["pixels_ratio"] == 1.0 and len(record["single"]) == 3 and len(record["points"]) == 2
    assert set(record["front"]) <= {p["name"] for p in record["points"]}
    # Within 100 AP every point qualifies: the cheapest is the one with the fewest pixels.
    chosen = next(p for p in record["points"] if p["name"] == record["cheapest_within_loss"])
    assert chosen["pixels_ratio"] == min(p["pixels_ratio"] for p in record["points"])
    for p in record["points"]:
        assert 0 < p["pixels_ratio"] <= 1.0 + 1e-9 and {"AP", "APs", "chip_params", "label"} <= set(p)
    # Without --png the plot goes beside the record (never over the README's docs/figures/sweep.png).
    other = tmp_path / "other.json"
    assert sweep.main(["--bundle", bundle, "--annotations", annotations, "--grid", "t1=0.99", "--json", str(other),
                       "--no-progress"]) == 0
    assert "plot written to " + str(tmp_path / "other.png") in capsys.readouterr().out
    assert cv2.imread(str(tmp_path / "other.png")) is not None
    # t1 = 0.99 leaves (almost surely) fewer scale-2 chips than 0.02: never more pixels.
    a, b = record["points"]
    assert b["pixels"] <= a["pixels"]
    # A budget nothing fits, without --max-loss: said so, and the plot and the record are still written.
    png.unlink()
    out.unlink()
    assert sweep.main(["--bundle", bundle, "--annotations", annotations, "--grid", "t1=0.99;t2=0.2",
                       "--budget", "0.0001", "--png", str(png), "--json", str(out), "--no-progress"]) == 0
    assert "no setting fits a budget of 0.0001" in capsys.readouterr().out
    assert cv2.imread(str(png)) is not None
    record = json.loads(out.read_text())
    assert record["best_within_budget"] is None and record["cheapest_within_loss"] is None
    assert sweep.main(["--bundle", bundle, "--annotations", annotations, "--grid", "d1=2"]) == 2
    assert "dilation" in capsys.readouterr().err


def test_breakdown_settings_open_one_transition_at_a_time():
    chips = [{"threshold": 0.03, "dilation": 1, "min_size": 5}, {"threshold": 0.15, "dilation": 3, "min_size": 6}]
    base = sweep.setting(chips, (570, 608))
    named = sweep.breakdown_settings(base)
    assert [n for n, _ in named] == ["bundle", "open 1", "open 2", "open all"]
    assert named[0][1] == base and named[0][1] is not base
    assert [p["threshold"] for p in named[1][1]["chip_params"]] == [0.0, 0.15]
    assert [p["threshold"] for p in named[2][1]["chip_params"]] == [0.03, 0.0]
    assert [p["threshold"] for p in named[3][1]["chip_params"]] == [0.0, 0.0]
    assert all(p["dilation"] == b["dilation"] and p["min_size"] == b["min_size"]
               for _, s in named for p, b in zip(s["chip_params"], chips))
    assert all(s["coarse_scale"] == [570.0, 608.0] for _, s in named)  # opening keeps the coarse scale
    assert chips[0]["threshold"] == 0.03 and base["chip_params"][0]["threshold"] == 0.03  # nothing changed


def test_sweep_breakdown_all_open_is_sniper(tiny, tmp_path, capsys):
    """Every transition open: the cascade runs the whole image at every scale, so its AP and pixels are
    sniper's, computed by the other path (in_valid_range, not focus stacking)."""
    bundle, annotations, _ = tiny
    out = tmp_path / "breakdown.json"
    assert sweep.main(["--bundle", bundle, "--annotations", annotations, "--grid", "", "--breakdown",
                       "--png", "", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Breakdown of the bundle's setting" in text and "they agree" in text
    record = json.loads(out.read_text())
    rows = {r["name"]: r for r in record["breakdown"]}
    assert list(rows) == ["bundle", "open 1", "open 2", "open all"]
    assert rows["open all"]["AP"] == record["sniper"]["AP"]
    assert rows["open all"]["pixels_ratio"] == pytest.approx(1.0, abs=1e-12)
    points = {p["name"]: p for p in record["points"]}
    base = points[rows["bundle"]["point"]]
    for r in rows.values():
        p = points[r["point"]]
        assert r["AP_recovered"] == pytest.approx(p["AP"] - base["AP"])
        assert r["pixels_added"] == pytest.approx(p["pixels_ratio"] - base["pixels_ratio"])
        assert p["pixels_ratio"] >= base["pixels_ratio"] - 1e-12  # opening never runs fewer pixels
    # A bundle whose AutoFocus scale 1 has its own size: all open is not sniper, and the check says why.
    coarse = tmp_path / "coarse"
    shutil.copytree(bundle, coarse)
    meta = json.loads((coarse / "bundle.json").read_text())
    (coarse / "bundle.json").write_text(json.dumps({**meta, "coarse_scale": [128, 176]}))
    assert sweep.main(["--bundle", str(coarse), "--annotations", annotations, "--grid", "", "--breakdown",
                       "--png", "", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "need not agree" in text and "c=128x176" in text and "DIFFER" not in text
    rows = {r["name"]: r for r in json.loads(out.read_text())["breakdown"]}
    assert rows["open all"]["pixels_ratio"] > 1.0  # scale 1 at 128x176 runs more than sniper's 96x128


def test_sweep_reuse_gives_the_engines_own_results(tiny):
    """The sweep's cached network outputs must not change a point: compare with plain engine calls."""
    bundle, annotations, _ = tiny
    engine = common.open_engine(bundle)
    eval_set = common.load_eval_set(annotations)
    chips = [{"threshold": 0.01, "dilation": 1, "min_size": 3}, {"threshold": 0.05, "dilation": 3, "min_size": 4}]
    settings_ = [sweep.setting(chips), sweep.setting(chips, (400, 448))]
    result = sweep.sweep(engine, eval_set, settings_, progress=False)
    for point, s in zip(result["points"], settings_):
        dets, real = {}, 0
        for info, image in zip(eval_set.infos, eval_set.images):
            dets[info["id"]] = engine(image, chip_params=chips, coarse_scale=s["coarse_scale"])
            real += common.pixels(engine.last_stats)[0]
        assert point["pixels"] == real and point["coarse_scale"] == s["coarse_scale"]
        assert {k: point[k] for k in common.METRICS} == common.coco_metrics(eval_set, dets)
    assert result["points"][0]["pixels"] != result["points"][1]["pixels"]  # the coarse scale did change


def test_network_tap_caches_and_restores(tiny):
    bundle, annotations, images = tiny
    engine = common.open_engine(bundle)
    image = cv2.imread(str(images[0]))
    cache, record = {}, []
    with common.network_tap(engine, cache=cache, record=record):
        first = engine(image, mode="sniper")
        entries = len(cache)
        second = engine(image, mode="sniper")
    assert entries == 3 and len(cache) == 3 and len(record) == 6  # 3 scales, run once, served twice
    np.testing.assert_array_equal(first.boxes, second.boxes)
    assert "infer" not in vars(engine)  # the engine's own method again
    np.testing.assert_array_equal(engine(image, mode="sniper").boxes, first.boxes)


# ------------------------------------------------------------------------------------ visualize

def test_focus_over_image_cells():
    focus = np.zeros((4, 5), np.float32)
    focus[1, 2] = 1.0
    heat = visualize.focus_over_image(focus, 0.5, 16, (128, 160))  # a cell covers 32 x 32 original px
    ys, xs = np.nonzero(heat)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (32, 63, 64, 95)
    assert heat.shape == (128, 160)


def test_visualize_main_writes_a_png(tiny, tmp_path, capsys):
    bundle, _, images = tiny
    out = tmp_path / "figures" / "example.png"
    assert visualize.main([str(images[1]), "--bundle", bundle, "--out", str(out), "--score", "0.05"]) == 0
    figure, source = cv2.imread(str(out)), cv2.imread(str(images[1]))
    assert figure is not None and figure.shape[1] == source.shape[1] and figure.shape[0] > source.shape[0]
    assert "chips per scale" in capsys.readouterr().out
    assert visualize.main(["/nonexistent.jpg", "--bundle", bundle, "--out", str(out)]) == 2


# ------------------------------------------------------------------------------------ peers (SAHI)

def test_peers_without_sahi_names_the_install(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sahi", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "sahi.models.base", None)
    monkeypatch.setitem(sys.modules, "sahi.predict", None)
    bundle, annotations, _ = tiny
    assert peers.main(["--bundle", bundle, "--annotations", annotations]) == 3
    assert peers.SAHI_INSTALL in capsys.readouterr().err


@pytest.mark.skipif(SAHI_MISSING is not None, reason=SAHI_MISSING or "")
def test_peers_main_outputs(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    out = tmp_path / "peers.json"
    assert peers.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "1", "--slice", "256",
                       "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert any(line.startswith("sahi") for line in text.splitlines())
    record = json.loads(out.read_text())
    assert list(record["methods"]) == ["autofocus", "sniper", "sahi"]
    s = record["methods"]["sahi"]
    assert s["images_per_s"] > 0 and s["pixels_per_image"] > 0 and 0 <= s["AP"] <= 100
    assert record["sahi"]["postprocess_used"] == "NMS"  # SAHI's own switch below confidence 0.1
    assert "sahi" in record["versions"]


@pytest.mark.skipif(SAHI_MISSING is not None, reason=SAHI_MISSING or "")
def test_sahi_wrapper_is_the_engines_detector(tiny):
    """One slice holding the whole image (so no extra full-image pass): SAHI's boxes are a subset of the
    engine's own single-scale detections above the confidence floor (channels, shifts, labels intact)."""
    from sahi.predict import get_sliced_prediction
    bundle, annotations, _ = tiny
    engine = common.open_engine(bundle)
    eval_set = common.load_eval_set(annotations, limit=1)
    image = eval_set.images[0]
    model = peers.engine_detection_model(engine, 3, 0.05)
    result = get_sliced_prediction(np.ascontiguousarray(image[..., ::-1]), model, slice_height=4096, slice_width=4096,
                                   verbose=0)
    got = peers.to_detections(result.object_prediction_list)
    ref = engine(image, mode="single", scale=3)
    keep = ref.scores >= 0.05
    assert len(got) > 0 and len(got) <= keep.sum()
    expected = {(tuple(np.round(b, 2)), int(c)) for b, c in zip(ref.boxes[keep], ref.labels[keep])}
    for b, c in zip(got.boxes, got.labels):
        assert (tuple(np.round(b, 2)), int(c)) in expected
    assert model.pixels[0] == whole_image_pixels(*image.shape[:2], SCALES[2])


def test_fps_bootstrap_intervals(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    out = tmp_path / "fps.json"
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--repeats", "1", "--modes",
                     "autofocus,sniper", "--bootstrap", "30", "--json", str(out), "--no-progress"]) == 0
    assert "AP - sniper" in capsys.readouterr().out
    modes = json.loads(out.read_text())["modes"]
    for r in modes.values():
        low, high = r["AP_interval"]
        assert low <= high and r["AP_interval_resamples"] == 30
        assert r["AP_vs_sniper_interval"][0] <= r["AP_vs_sniper_interval"][1]
    assert modes["sniper"]["AP_vs_sniper"] == 0.0 and modes["sniper"]["AP_vs_sniper_interval"] == [0.0, 0.0]
    assert fps.main(["--bundle", bundle, "--annotations", annotations, "--bootstrap", "-1", "--no-progress"]) == 2
    assert "bootstrap" in capsys.readouterr().err
    # the point estimates are fps's own pycocotools AP
    for r in modes.values():
        assert r["AP_vs_sniper"] == pytest.approx(r["AP"] - modes["sniper"]["AP"], abs=0.01)


# ------------------------------------------------------------------------------------ chip_coverage

def test_held_whole_against_a_loop():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 100, (60, 2))
    objects = np.concatenate([xy, xy + rng.uniform(1, 30, (60, 2))], 1)
    cxy = rng.uniform(0, 80, (9, 2))
    chips = np.concatenate([cxy, cxy + rng.uniform(10, 60, (9, 2))], 1)
    expected = [any(c[0] - 0.5 <= o[0] and c[1] - 0.5 <= o[1] and o[2] <= c[2] + 0.5 and o[3] <= c[3] + 0.5
                    for c in chips) for o in objects]
    assert chip_coverage.held_whole(objects, chips).tolist() == expected
    assert 0 < sum(expected) < len(expected)  # the draw has both kinds
    # Hand-worked: the chip itself is held; a side 0.4 px out is within the tolerance, 0.6 px out is not.
    chip = np.array([[10, 10, 50, 50]], np.float32)
    boxes = np.array([[10, 10, 50, 50], [9.6, 20, 30, 30], [9.4, 20, 30, 30], [20, 20, 50.6, 30]], np.float32)
    assert chip_coverage.held_whole(boxes, chip).tolist() == [True, True, False, False]
    assert chip_coverage.held_whole(boxes, np.zeros((0, 4))).tolist() == [False] * 4
    assert chip_coverage.held_whole(np.zeros((0, 4)), chip).shape == (0,)


def test_size_bins():
    edges = chip_coverage.parse_bins("8,16,32")
    boxes = np.array([[0, 0, 4, 4], [0, 0, 8, 8], [0, 0, 4, 36], [0, 0, 20, 20], [0, 0, 32, 32], [0, 0, 100, 1]],
                     np.float32)
    # sqrt(area): 4 (below the first edge), 8, 12, 20, 32 (the last bin is open), 10
    assert chip_coverage.size_bin(boxes, edges).tolist() == [-1, 0, 0, 1, 2, 0]
    for bad in ("", "8,8", "16,8", "-1,4", "a,b", "4,inf"):
        with pytest.raises(ValueError, match="bins"):
            chip_coverage.parse_bins(bad)


def test_chip_coverage_main(tiny, tmp_path, capsys):
    bundle, annotations, _ = tiny
    out = tmp_path / "coverage.json"
    # Threshold 0 opens both transitions: every finer scale runs on the whole image, so it holds every object
    # (the generated boxes lie inside their images); at 0.99 no more of them than that.
    assert chip_coverage.main(["--bundle", bundle, "--annotations", annotations, "--grid", "t1=0,0.99;t2=0",
                               "--bins", "0,32,96", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "held by a scale-2 chip" in text and "held by a scale-3 chip" in text and ">= 96" in text
    record = json.loads(out.read_text())
    from model.data import load_coco
    coco = load_coco(annotations)
    sizes = np.concatenate([np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) for b in coco.boxes.values()])
    expected = np.histogram(sizes, bins=[0, 32, 96, np.inf])[0].tolist()
    open_all, strict = record["settings"]
    assert record["images"] == 2 and record["bins"] == [0, 32, 96]
    assert open_all["objects"] == expected == strict["objects"] and sum(expected) > 0
    assert open_all["held"] == [expected, expected]
    for scale in range(2):
        assert all(h <= n for h, n in zip(strict["held"][scale], expected))
    assert chip_coverage.main(["--bundle", bundle, "--annotations", annotations, "--bins", "8,4"]) == 2
    assert "bins" in capsys.readouterr().err
    assert chip_coverage.main(["--bundle", bundle, "--annotations", annotations, "--grid", "d1=2"]) == 2
    assert "dilation" in capsys.readouterr().err
