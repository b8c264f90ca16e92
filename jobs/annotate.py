"""The annotate job on Ray Data.

    list INPUT -> read bytes -> decode (CPU tasks) -> detect + ViTPose (actor pool, GPU when there is one)
               -> prediction rows -> Parquet part files under OUTPUT [-> COCO results JSON]

Resume: a re-run of the same command reads which images OUTPUT already holds and only does the rest.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

from jobs.decode import decode_batch
from jobs.pose_worker import PoseWorker
from jobs.sinks import PredictionSink
from jobs.sources import list_input, read_dataset
from jobs.storage import finished_uris, open_filesystem, remove_stale_temporaries

log = logging.getLogger("vitpose_batch")

DEFAULT_MODEL = "usyd-community/vitpose-base-simple"
DEFAULT_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"
# Environment the workers need to reach object storage and hubs; forwarded to a cluster through runtime_env.
FORWARDED_ENV_PREFIXES = ("AWS_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "FSSPEC_", "GCSFS_", "HF_", "NO_GCE_CHECK",
                          "VITPOSE_")


@dataclass
class AnnotateOptions:
    input: str
    output: str
    model: str = DEFAULT_MODEL
    detector: str | None = DEFAULT_DETECTOR
    boxes: str | None = None
    image_root: str | None = None
    image_column: str | None = None
    flip_test: bool = False
    dataset_index: int | None = None
    batch_size: int = 16  # images per actor call
    crops_per_forward: int | None = None
    ray_address: str | None = None
    coco_json: str | None = None
    device: str = "auto"
    dtype: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    decode_cpus: float = 0.5


@dataclass
class Summary:
    images: int = 0
    persons: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: int = 0
    steady_crops_per_s: float | None = None  # between the first and the last committed part: no start-up in it
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.images / self.seconds if self.seconds else 0.0
        crops = self.persons / self.seconds if self.seconds else 0.0
        steady = f" ({self.steady_crops_per_s:.2f} crops/s after start-up)" if self.steady_crops_per_s else ""
        return [
            f"images: {self.images} ({self.skipped} already done before this run), persons: {self.persons}, "
            f"error rows: {self.errors}, part files: {self.files}",
            f"time: {self.seconds:.1f} s, {rate:.2f} images/s, {crops:.2f} crops/s{steady}",
        ]


def run_annotate(opts: AnnotateOptions) -> Summary:
    """Run the whole job; raises a ValueError subclass with a one-line message when it cannot run."""
    import ray

    from jobs.refs import check_detector_ref, check_model_ref, check_output_writable

    # Everything that can be checked is checked before OUTPUT is touched: a refused run leaves nothing behind.
    listing = list_input(opts.input, image_root=opts.image_root, image_column=opts.image_column)
    check_model_ref(opts.model)
    box_index = None
    if opts.boxes:
        from schemas.coco import load_boxes

        box_index = load_boxes(opts.boxes, images=listing.coco_images)
    elif opts.detector:
        check_detector_ref(opts.detector)
    else:
        raise ValueError("no person boxes: pass --detector REF or --boxes FILE")
    check_output_writable(opts.output)

    remove_stale_temporaries(opts.output)
    finished = finished_uris(opts.output)
    write_job_record(opts)
    summary = Summary(skipped=len(finished))
    if listing.kind == "files" and not set(listing.uris) - finished:
        log.info("every image of %s is already in %s: nothing to do", opts.input, opts.output)
        return summary
    start = time.perf_counter()
    connect(opts.ray_address)
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        device = ("cuda" if gpus else "cpu") if opts.device == "auto" else opts.device
        actors, actor_cpus, threads = plan_actors(resources, device, opts)
        items = read_dataset(listing, finished, opts.batch_size, image_column=opts.image_column)
        # GPU actors get pixels decoded by CPU tasks. CPU actors decode for themselves: there the actors are the
        # compute, and decode tasks beside them preempt torch's threads (2 cores: +40% per batch, measured).
        decode_in_actor = not device.startswith("cuda")
        if not decode_in_actor:
            items = items.map_batches(decode_batch, batch_size=8, batch_format="pyarrow",
                                      fn_kwargs={"boxes": box_index}, num_cpus=opts.decode_cpus)
        rows = items.map_batches(
            PoseWorker,
            fn_constructor_kwargs={
                "model": opts.model, "detector": None if opts.boxes else opts.detector, "device": device,
                "dtype": opts.dtype, "flip_test": opts.flip_test, "dataset_index": opts.dataset_index,
                "crops_per_forward": opts.crops_per_forward, "threads": threads,
                "decode": decode_in_actor, "boxes": box_index if decode_in_actor else None,
            },
            batch_size=opts.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=actor_cpus,
            num_gpus=1 if device.startswith("cuda") else 0,
            # Ray Data's actor pools restart a dead actor and re-run its batch (max_restarts / max_task_retries -1).
        )
        sink = PredictionSink(opts.output, run_id=time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8])
        rows.write_datasink(sink)
    finally:
        if opts.ray_address is None and not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()
    summary.images, summary.persons = sink.totals["images"], sink.totals["persons"]
    summary.errors, summary.files = sink.totals["errors"], sink.totals["files"]
    summary.seconds = time.perf_counter() - start
    if len(sink.commits) > 2 and sink.commits[-1][0] > sink.commits[0][0]:
        # crops committed after the first part, over the time from the first to the last commit
        later = sum(persons for _, persons in sink.commits[1:])
        summary.steady_crops_per_s = later / (sink.commits[-1][0] - sink.commits[0][0])
    if opts.coco_json:
        from jobs.export import export_coco

        summary.extra["coco_json"] = export_coco(opts.output, opts.coco_json, fmt="results")
    return summary


def write_job_record(opts: AnnotateOptions) -> None:
    """`_job.json` in OUTPUT: what made these rows (evaluate reports the detector's box AP from it)."""
    fs, folder = open_filesystem(opts.output)
    record = {"model": opts.model, "detector": None if opts.boxes else opts.detector, "boxes": opts.boxes,
              "flip_test": opts.flip_test, "dataset_index": opts.dataset_index, "input": opts.input}
    fs.pipe_file(f"{folder}/_job.json", json.dumps(record, indent=2).encode())


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); otherwise start Ray in this process."""
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    runtime_env = {"env_vars": env} if env else None
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # In-process Ray talks to itself over loopback.
        ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                 _node_ip_address="127.0.0.1")


def plan_actors(resources: dict, device: str, opts: AnnotateOptions) -> tuple[int, float, int | None]:
    """(pool size, CPUs per actor, torch threads per actor) that leave the read/decode tasks CPU to run on.

    On GPUs: one actor per GPU, one CPU each. On CPUs: actors never take every CPU of the cluster -- a pool that
    holds them all starves the read tasks and the job hangs without an error -- so one CPU stays for reading and
    decoding, and the actors' torch threads use what they were given.
    """
    cpus = resources.get("CPU", 1)
    if device.startswith("cuda"):
        actors = opts.actors or max(1, int(resources.get("GPU", 1)))
        per_actor = opts.cpus_per_actor or 1.0
        return actors, per_actor, max(1, int(per_actor))
    per_actor = opts.cpus_per_actor or (max(1.0, cpus - 1.0) if cpus <= 9 else 8.0)
    budget = max(per_actor, cpus - 1.0)  # keep one CPU for reading and decoding
    actors = opts.actors or max(1, int(budget // per_actor))
    # On a 2-core machine the actor is granted 1 CPU but the decode tasks are light: let torch use both cores.
    threads = max(1, int(per_actor) + (1 if cpus <= 2 else 0))
    return actors, per_actor, threads
