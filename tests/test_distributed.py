"""python -m runtime --ray (runtime/distributed.py) on a local Ray instance started here (one per module,
2 CPUs): the same final file as the single process on 50 val images, a killed driver restarted gives the
uninterrupted file, actors' thread limits. The Ray cases skip where Ray is not installed (the [ray] extra)."""
import json
import os
import time

import pytest

from collection_fixtures import REPO, cli_command, kill_after_shards, shard_records, write_images
from engine_fixtures import val_images
from runtime.__main__ import main
from runtime.distributed import DECODE_CPUS, EngineActor, plan_actors

try:
    import ray
    import ray.data  # noqa: F401
    _NO_RAY = None
except ImportError as e:
    _NO_RAY = f"Ray Data is not installed (pip install '.[ray]'): {e}"

needs_ray = pytest.mark.skipif(_NO_RAY is not None, reason=_NO_RAY or "")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (2 CPUs, as on the CI machine); its workers import this tree."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([previous] if previous else []))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous


def _cli(bundle, *args):
    return main([*map(str, args), "--bundle", str(bundle.folder), "--backend", "onnxruntime", "--no-progress"])


# ------------------------------------------------------------------------------------ no Ray needed

def test_plan_actors():
    two_cpus = plan_actors({"CPU": 2.0}, 2)
    assert (two_cpus["count"], two_cpus["num_gpus"], two_cpus["threads"]) == (2, 0, 1)
    assert two_cpus["count"] * two_cpus["num_cpus"] + DECODE_CPUS <= 2  # room left to decode: no deadlock
    assert plan_actors({"CPU": 2.0}, None)["count"] == 1
    sixteen = plan_actors({"CPU": 16.0}, None)
    assert (sixteen["count"], sixteen["threads"]) == (4, 4)
    gpus = plan_actors({"CPU": 64.0, "GPU": 4.0}, None)
    assert (gpus["count"], gpus["num_gpus"], gpus["threads"]) == (4, 1, 16)
    assert plan_actors({"CPU": 64.0, "GPU": 4.0}, 8)["count"] == 4  # one GPU an actor: no more actors than GPUs
    assert plan_actors({"CPU": 64.0, "GPU": 4.0}, 2)["count"] == 2


def test_actor_engine_uses_its_share_of_threads(bundle, tmp_path):
    import onnxruntime as ort
    import torch
    from runtime import AutoFocusEngine
    threads_before, options_before = torch.get_num_threads(), ort.SessionOptions
    try:
        actor = EngineActor({"bundle": str(bundle.folder), "backend": "onnxruntime"}, "sniper", None, None, tmp_path,
                            8, threads=1)
        assert actor.worker.engine._backend.session.get_session_options().intra_op_num_threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads_before)
    assert ort.SessionOptions is options_before  # limited inside the actor's engine construction only
    plain = AutoFocusEngine(bundle, backend="onnxruntime")
    assert plain._backend.session.get_session_options().intra_op_num_threads == 0  # ONNX Runtime's default


# ------------------------------------------------------------------------------------ on Ray

@needs_ray
def test_ray_matches_single_process_on_50_val_images(bundle, local_ray, tmp_path):
    from model.synth import DEFAULT_SPLITS, generate_split
    seed, _ = DEFAULT_SPLITS["val"]
    annotations = generate_split(tmp_path / "val", seed, 50, split="val")  # the val split's first 50 images
    single, on_ray = tmp_path / "single.json", tmp_path / "ray.json"
    assert _cli(bundle, annotations, "--out", single) == 0
    assert _cli(bundle, annotations, "--out", on_ray, "--ray", "auto", "--workers", "2", "--shard-size", "8",
                "--viz", tmp_path / "viz") == 0
    results = json.loads(single.read_text())
    assert len({e["image_id"] for e in results}) >= 45 and len(results) > 1000  # detections to compare
    assert on_ray.read_bytes() == single.read_bytes()  # same detections, image for image, in the same order
    assert len(list((tmp_path / "viz").glob("*.png"))) == 50
    writers = {_writer_pid(s) for s in (tmp_path / "ray.json.parts").glob("*.jsonl")}
    assert writers and os.getpid() not in writers  # the actors wrote the shards, not the driver


@needs_ray
def test_ray_driver_killed_and_restarted_gives_the_uninterrupted_file(bundle, local_ray, tmp_path):
    paths = write_images(tmp_path / "in", [im for im, _, _ in val_images(12)])
    (tmp_path / "in" / "corrupt.png").write_bytes(b"not an image")
    args = [tmp_path / "in", "--bundle", bundle.folder, "--backend", "onnxruntime", "--shard-size", "2"]
    reference = tmp_path / "single.json"
    assert main([*map(str, args), "--out", str(reference), "--no-progress"]) == 1  # the corrupt file
    out, work = tmp_path / "dets.json", tmp_path / "dets.json.parts"
    address = local_ray.get_runtime_context().gcs_address
    kill_after_shards(cli_command(*args, "--out", out, "--ray", address, "--workers", "2"), work)
    pids = {_writer_pid(s) for s in work.glob("*.jsonl")}
    _wait_gone(pids)  # Ray ends a dead driver's actors; a straggler would still be writing
    done_before = len(shard_records(work))
    assert 4 <= done_before < 13 and not out.exists(), "the driver was not killed halfway"
    assert main([*map(str, args), "--out", str(out), "--ray", "auto", "--workers", "2", "--no-progress"]) == 1
    assert out.read_bytes() == reference.read_bytes()
    assert (tmp_path / "dets.failures.json").read_bytes() == (tmp_path / "single.failures.json").read_bytes()
    done = [r["id"] for r in shard_records(work) if "results" in r]
    assert sorted(done) == sorted(map(str, paths))  # none twice, none missing (failures are retried on a re-run)


def _writer_pid(shard) -> int:
    return int(shard.name.rsplit("-", 3)[1])  # <host>-<pid>-<stamp>-<index>.jsonl (collection.writer_name)


def _wait_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


@needs_ray
def test_actor_that_cannot_start_stops_the_run_with_a_clear_error(bundle, local_ray, tmp_path, capsys):
    """An engine that cannot load on the workers (here: TensorRT without a GPU) ends the run with one line
    naming the cause, instead of a traceback or a wait."""
    paths = write_images(tmp_path / "in", [im for im, _, _ in val_images(2)])
    status = main([*map(str, paths), "--bundle", str(bundle.folder), "--backend", "tensorrt", "--device", "cuda",
                   "--out", str(tmp_path / "dets.json"), "--ray", "auto", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "error: the Ray run stopped" in err and "tensorrt" in err
    assert not (tmp_path / "dets.json").exists()
