"""python -m runtime --ray: the collection on Ray Data (pip install 'autofocus-trt[ray]').

    paths (a dataset) -> decode (Ray tasks, num_cpus=DECODE_CPUS each) -> EngineActor pool (map_batches
    with a callable class: one AutoFocusEngine an actor, num_gpus=1 where the cluster has GPUs) -> each
    actor batch is one shard, written by the actor into the work folder -> the driver counts the images
    (progress) and, at the end, runtime.collection merges the shards (runtime/shards.py).

The actors run runtime.collection.BatchWorker, as the single process does: the same results, image for
image. The work folder, --viz and the bundle must be paths every node can reach (a shared file system).
"""
from __future__ import annotations

import json
import socket
from contextlib import contextmanager

import numpy as np

from .collection import BatchWorker, read_image, writer_name
from .inputs import CollectionError, Item, key
from .shards import ShardStore

DECODE_CPUS = 0.25     # a decode task's CPU reservation (Ray's logical CPUs): reading a JPEG is light
ACTOR_CPU_SHARE = 0.75  # of the cluster's CPUs reserved by the actors together; the rest is left to decoding
CONNECT_TIMEOUT_S = 3.0


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; ray alone lacks Data
    except ImportError as e:
        raise CollectionError(f"--ray needs Ray Data: pip install 'autofocus-trt[ray]' ({e})") from None
    return ray


def check_reachable(address: str):
    """An explicit HOST:PORT (or ray://HOST:PORT) must accept a connection within CONNECT_TIMEOUT_S:
    ray.init would otherwise retry for a minute or more before saying the cluster is not there."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise CollectionError(f"--ray {address}: expected 'auto' or HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise CollectionError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                              "with `ray start --head` on that machine, or check the address") from None


def connect(address: str) -> bool:
    """Joins the cluster at address ("auto": RAY_ADDRESS, else the latest `ray start` on this machine,
    else a new local instance). A Ray already started in this process (a test, a notebook) is used as
    it is. Returns whether this call started the connection."""
    check_reachable(address)
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "auto" else address, logging_level="warning")
    except Exception as e:  # noqa: BLE001 - Ray raises several kinds; the message says which
        raise CollectionError(f"--ray {address}: could not join the Ray cluster ({type(e).__name__}: {e})") from None
    return True


def plan_actors(resources: dict, workers: int | None) -> dict:
    """How many actors, their reservations and ONNX Runtime / torch threads each, from the cluster's
    resources: one actor per GPU where there are GPUs (at most --workers), else --workers actors
    (default CPUs // 4) splitting the CPUs, so that actors together do not oversubscribe the cores."""
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if gpus:
        count = min(workers or gpus, gpus)
    else:
        count = workers or max(1, int(cpus) // 4)
    return {"count": count, "num_gpus": 1 if gpus else 0, "num_cpus": ACTOR_CPU_SHARE * cpus / count,
            "threads": max(1, int(cpus) // count)}


@contextmanager
def onnxruntime_threads(threads: int):
    """Sessions created inside use `threads` intra-op threads and one inter-op thread (ONNX Runtime's
    default is one per core, per session: N actors on one machine would run N x cores threads)."""
    import onnxruntime as ort
    original = ort.SessionOptions

    def limited():
        options = original()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return options

    ort.SessionOptions = limited
    try:
        yield
    finally:
        ort.SessionOptions = original


def decode(row: dict) -> dict:
    """A dataset row {"key", "path"} -> with "image" (HxWx3 uint8; 1x1x3 zeros when unreadable) and
    "error" ("" when readable)."""
    image, error = read_image(row["path"])
    return {**row, "image": image if image is not None else np.zeros((1, 1, 3), np.uint8), "error": error or ""}


class EngineActor:
    """One AutoFocusEngine; each call detects one batch of decoded rows and writes it as one shard."""

    def __init__(self, engine_args: dict, mode: str, category_ids, viz, work, batch_size: int, threads: int,
                 score_threshold: float = 0.0):
        import torch
        from .engine import AutoFocusEngine
        torch.set_num_threads(threads)
        with onnxruntime_threads(threads):
            engine = AutoFocusEngine(**engine_args)
        self.worker = BatchWorker(engine, mode, category_ids, viz, batch_size, score_threshold)
        self.store = ShardStore(work)
        self.name, self.shards = writer_name(), 0

    def __call__(self, batch: dict) -> dict:
        items = [Item(json.loads(k), str(p)) for k, p in zip(batch["key"], batch["path"])]
        errors = [str(e) or None for e in batch["error"]]
        records = self.worker.process(items, list(batch["image"]), errors)
        self.store.write(records, self.name, self.shards)
        self.shards += 1
        return {"key": np.asarray(batch["key"]), "failed": np.array(["error" in r for r in records])}


def run(todo: list, options, category_ids, outputs, progress):
    """Runs todo on the connected cluster; the shards land in outputs.work."""
    ray = import_ray()
    if not todo:
        return
    plan = plan_actors(ray.cluster_resources(), options.workers)
    print(f"Ray: {plan['count']} actor(s), {plan['num_gpus']} GPU and {plan['threads']} thread(s) each, "
          f"{options.shard_size} images a shard", flush=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images; Ray's would interleave with it
    engine_args = {"bundle": str(options.bundle), "backend": options.backend, "device": options.device,
                   **options.overrides}
    ds = ray.data.from_items([{"key": key(i.id), "path": i.path} for i in todo])
    ds = ds.map(decode, num_cpus=DECODE_CPUS)
    ds = ds.map_batches(EngineActor, batch_size=options.shard_size, batch_format="numpy", zero_copy_batch=False,
                        compute=ray.data.ActorPoolStrategy(size=plan["count"]),
                        num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                        fn_constructor_kwargs={"engine_args": engine_args, "mode": options.mode,
                                               "category_ids": category_ids,
                                               "viz": None if outputs.viz is None else str(outputs.viz),
                                               "work": str(outputs.work), "batch_size": options.batch_size,
                                               "threads": plan["threads"],
                                               "score_threshold": options.score_threshold})
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            progress.update(len(batch["key"]))
    except Exception as e:  # noqa: BLE001 - Ray's errors (an actor that cannot start, a lost node) have many types
        cause = (str(e).strip().splitlines() or [""])[-1]
        raise RuntimeError(f"the Ray run stopped ({type(e).__name__}: {cause}); the shards finished so far are kept "
                           f"in {outputs.work}: the same command again goes on from there") from e
