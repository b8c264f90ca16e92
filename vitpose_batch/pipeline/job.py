"""The annotate job on Ray Data.

    list INPUT (streamed) -> drop what OUTPUT holds -> read + decode -> detect + ViTPose (actor pool)
              -> rows stream to the driver -> right-sized Parquet parts under OUTPUT [-> COCO results JSON]
    then videos: scan (a task per video) -> segments -> decode + detect + ViTPose + track (actor pool)
              -> the driver joins tracks across segments -> the same parts

Before any work: every check, then the OUTPUT lease (one writer at a time), then the provenance check (a run with
other settings is refused), then crash recovery and the resume scan. `vitpose_batch.output` owns that protocol.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from vitpose_batch.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DETECTOR, DEFAULT_MODEL
from vitpose_batch.files.addresses import split_image_uri
from vitpose_batch.files.uris import canonical_prefix, canonical_uri
from vitpose_batch.output import lease as leases
from vitpose_batch.output import parts, provenance, resume, runs
from vitpose_batch.output.layout import Output
from vitpose_batch.output.session import OutputSession, SessionRun
from vitpose_batch.pipeline import signals
from vitpose_batch.pipeline.actors import actor_pool, plan_actors
from vitpose_batch.pipeline.diagnostics import Diagnostics, DroppedBoxes
from vitpose_batch.pipeline.image_decoding import read_batch
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.pipeline.preflight import check_device, check_run
from vitpose_batch.pipeline.ray_session import connect
from vitpose_batch.pipeline.sources import (
    Listing,
    files_dataset,
    shards_dataset,
)
from vitpose_batch.pipeline.video_rows import VideoRows, output_lookup
from vitpose_batch.pipeline.video_segments import Sampling, video_segments
from vitpose_batch.pipeline.video_worker import VideoWorker
from vitpose_batch.progress import Progress
from vitpose_batch.review.export import export_coco
from vitpose_batch.schemas.predictions import PREDICTION_SCHEMA

log = logging.getLogger("vitpose_batch")


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
    batch_size: int = DEFAULT_BATCH_SIZE  # images per actor call
    crops_per_forward: int | None = None
    ray_address: str | None = None
    coco_json: str | None = None
    device: str = "auto"
    dtype: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    decode_cpus: float = 0.5  # per read task before GPU actors
    calls_per_actor: int | None = None  # batches an actor runs at once; None: 2 on GPUs, 1 on CPUs
    read_tasks: bool | None = None  # files read by CPU tasks before the actors; None: on GPUs
    retry_errors: bool = False
    rows_per_file: int = parts.DEFAULT_ROWS_PER_FILE
    commit_interval: float = parts.DEFAULT_COMMIT_INTERVAL_S
    lease_ttl: float = leases.DEFAULT_TTL_S
    compile: bool = False  # torch.compile in the actors (speed only: not part of the provenance)
    sampling: Sampling = field(default_factory=Sampling)  # videos: which frames, detector cadence, segments


@dataclass
class Summary:
    images: int = 0
    persons: int = 0
    errors: int = 0
    skipped: int = 0
    redone: int = 0
    recovered: int = 0
    seconds: float = 0.0
    files: int = 0
    run_id: str = ""
    dropped: DroppedBoxes = field(default_factory=DroppedBoxes)  # boxes left out, per reason, the first named
    retried_batches: int = 0
    images_without_boxes: int = 0
    boxes_file: str | None = None
    steady_crops_per_s: float | None = None  # between the first and the last batch: no start-up in it
    videos: int = 0  # videos listed, and the frame rows this run wrote of them
    frames: int = 0
    videos_left_out: int = 0  # videos of a --boxes run (boxes name the persons of images; frames need a detector)
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.images / self.seconds if self.seconds else 0.0
        crops = self.persons / self.seconds if self.seconds else 0.0
        steady = f" ({self.steady_crops_per_s:.2f} crops/s after start-up)" if self.steady_crops_per_s else ""
        redone = f", {self.redone} error rows redone" if self.redone else ""
        recovered = f", {self.recovered} rows of a killed run recovered" if self.recovered else ""
        what = "images and video frames" if self.videos else "images"
        lines = [
            f"{what}: {self.images} ({self.skipped} already done before this run{redone}{recovered}), "
            f"persons: {self.persons}, error rows: {self.errors}, part files: {self.files}",
            f"time: {self.seconds:.1f} s, {rate:.2f} images/s, {crops:.2f} crops/s{steady}",
        ]
        if self.videos_left_out:
            lines.append(f"videos: {self.videos_left_out} left out: their frames need a --detector (--boxes names "
                         "the persons of images); label them with --detector into another OUTPUT")
        elif self.videos:
            lines.append(f"videos: {self.videos} ({self.frames} frame rows written in this run)")
        lines += self.dropped.lines()
        if self.retried_batches:
            lines.append(f"batches retried image by image: {self.retried_batches}")
        if self.boxes_file and self.images and self.images_without_boxes:
            share = self.images_without_boxes / self.images
            what = ("no image matched an entry of" if self.images_without_boxes == self.images
                    else f"{self.images_without_boxes} of {self.images} images ({share:.0%}) are not in")
            warning = " (are these the boxes of this INPUT?)" if share > 0.5 else ""
            lines.append(f"boxes: {what} {self.boxes_file}, matched by file name or COCO id{warning}")
        return lines


def check_coco_json(opts: AnnotateOptions) -> None:
    """`--coco-json` inside OUTPUT must be named `_*` (every other file there is a live Parquet part)."""
    if not opts.coco_json:
        return
    target, folder = canonical_uri(opts.coco_json), canonical_prefix(opts.output)
    name = target.rsplit("/", 1)[-1]
    if target.startswith(folder.rstrip("/") + "/") and not name.startswith(("_", ".")):
        raise ValueError(f"--coco-json {opts.coco_json} is inside OUTPUT, where every file but the Parquet parts is "
                         f"named _* or .*: write it as {opts.output.rstrip('/')}/_{name} or outside OUTPUT")


def settings_of(opts: AnnotateOptions, keypoint_set: str | None) -> provenance.Provenance:
    """This run's provenance: fingerprints of the model and of the detector or boxes file (bytes are read here)."""
    ref = provenance.canonical_ref
    return provenance.Provenance(
        model=ref(opts.model), model_fingerprint=provenance.fingerprint(opts.model),
        detector=None if opts.boxes else ref(opts.detector),
        detector_fingerprint=None if opts.boxes else provenance.fingerprint(opts.detector),
        boxes=ref(opts.boxes), boxes_fingerprint=provenance.fingerprint(opts.boxes),
        flip_test=opts.flip_test, dataset_index=opts.dataset_index, dtype=opts.dtype or "fp32",
        decode=dict(provenance.DECODING), keypoint_set=keypoint_set, video=opts.sampling.as_dict(),
    )


def run_annotate(opts: AnnotateOptions) -> Summary:
    """Run the whole job; raises a ValueError subclass with a one-line message when it cannot run."""

    # Every check comes before OUTPUT is touched: a refused run leaves OUTPUT byte-identical.
    opts.sampling.check()
    checked = check_run(opts)
    listing, box_index, keypoint_set = checked.listing, checked.box_index, checked.keypoint_set
    check_coco_json(opts)
    wanted = settings_of(opts, keypoint_set.name)
    output = Output.open(opts.output)  # the one opening of OUTPUT: everything below is handed this
    session = OutputSession(output, wanted, keypoint_set.keypoint_names, keypoint_set.name, source=opts.input,
                            lease_ttl=opts.lease_ttl, wrap_lease_errors=True,
                            stopped=(signals.Stopped, KeyboardInterrupt))
    session.check()
    address = opts.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        connect(address)  # joining a cluster is no work yet, and it tells whether the GPUs asked for exist
    check_device(opts.device, address)

    summary = Summary(run_id=runs.new_run_id())
    started = time.time()
    try:
        with session.run(lambda: {key: getattr(summary, key) for key in runs.COUNTS},
                         lambda: run_record_extra(opts, summary), run_id=summary.run_id) as run:
            summary.recovered = run.recovered
            execute(opts, run, listing, box_index, summary, keypoint_set.sigmas)
    except signals.Stopped as exc:
        exc.summary = summary
        raise
    finally:
        summary.seconds = time.time() - started
    if opts.coco_json:  # on every run, also when nothing was left to do: a re-run completes a failed export

        summary.extra["coco_json"] = export_coco(output, opts.coco_json, fmt="results")
    return summary


def execute(opts: AnnotateOptions, run: SessionRun, listing: Listing, box_index, summary: Summary,
            sigmas=()) -> None:
    """Resume scan of OUTPUT, then the Ray pipeline; rows stream into the run's PartWriter. Fills `summary`."""
    import ray

    output = run.output
    state = resume.scan_output(output, retry_all_errors=opts.retry_errors)
    plan = resume.ResumePlan()
    if box_index is not None:
        summary.boxes_file = opts.boxes
        for box in box_index.dropped:
            summary.dropped.add(box["reason"], box["image"], box["bbox"], where=box["where"])
    new_items = listed_work(opts, listing, state, plan, box_index, summary)
    if new_items is None:
        return
    started_here = not ray.is_initialized() and not (opts.ray_address or os.environ.get("RAY_ADDRESS"))
    connect(opts.ray_address)
    try:
        items = input_dataset(opts, listing, new_items, state, plan)
        # the listing is consumed (videos are known now): the error rows about to be redone leave their parts
        # before any new row lands
        videos = video_dataset(opts, listing, state, plan, box_index, summary)
        summary.videos = len(listing.videos)
        summary.redone = resume.drop_redone_rows(output, plan.redo)
        listed_only = listing.kind == "files" and not listing.videos  # videos' frames are known only to their scans
        summary.skipped = plan.already_done if listed_only else state.rows - summary.redone
        rows = pose_rows(opts, items, box_index) if items is not None else None
        total = plan.new if listed_only else None
        write_rows(opts, run, rows, videos, total, summary, sigmas)
    finally:
        if started_here:
            ray.shutdown()


def listed_work(opts, listing: Listing, state, plan, box_index, summary: Summary):
    """The listing's new images as a stream of chunks (shards: an empty stream), or None when nothing is left."""
    if listing.kind != "files":
        return iter(())
    new_items = resume.filter_listing(listing.chunks(), state, plan)
    if box_index is not None:
        new_items = count_unmatched(new_items, box_index, summary)
    first = next(new_items, None)
    if first is None and not listing.shards and not listing.videos:  # the walk is over: it found every shard there is
        summary.skipped = plan.already_done
        log.info("every image of %s is already in %s: nothing to do", opts.input, opts.output)
        return None
    return _chain(first, new_items) if first is not None else iter(())


def input_dataset(opts, listing: Listing, new_items, state, plan):
    """The images to label as a Ray Dataset: new files, and shard members OUTPUT lacks (filtered by the workers)."""
    items = files_dataset(new_items, opts.batch_size) if listing.kind == "files" else None
    if listing.shards:  # shard INPUT, or .tar shards found beside loose images (known once the walk is done)

        shards = set(listing.shards)
        plan.redo.update({k: v for k, v in state.redo_candidates.items() if split_image_uri(v[0])[0] in shards})
        members = shards_dataset("parquet" if listing.kind == "parquet" else "tar", listing.shards,
                                 finished=state.finished.without(_keys(plan.redo)), image_column=opts.image_column,
                                 image_root=opts.image_root)
        items = members if items is None else items.union(members)
    return items


def video_dataset(opts: AnnotateOptions, listing: Listing, state, plan, box_index, summary: Summary):
    """The videos' segments through the video pose actors (vitpose_batch.pipeline.video_worker): a Dataset of
    rows with link columns, or None without videos. Error rows of these videos that may pass join `plan.redo`."""
    import ray

    if not listing.videos:
        return None
    if box_index is not None or not opts.detector:  # known only now, with OUTPUT held: left out, and said so
        summary.videos_left_out = len(listing.videos)
        return None
    videos = set(listing.videos)
    plan.redo.update({k: v for k, v in state.redo_candidates.items()
                      if v[0] in videos or split_image_uri(v[0])[0] in videos})
    finished = state.finished.without(_keys(plan.redo)) if plan.redo else state.finished
    segments = segments_dataset(listing.videos, opts.sampling, finished, opts.decode_cpus)
    device, actors, actor_cpus, threads, gpu = actor_plan(opts)
    return segments.map_batches(
        VideoWorker,
        fn_constructor_kwargs={
            "model": opts.model, "detector": opts.detector, "device": device, "dtype": opts.dtype,
            "flip_test": opts.flip_test, "dataset_index": opts.dataset_index,
            "crops_per_forward": opts.crops_per_forward, "threads": threads,
            "detect_every": opts.sampling.detect_every, "compile": opts.compile,
        },
        batch_size=1, batch_format="pyarrow", compute=actor_pool(actors, opts.calls_per_actor or (2 if gpu else 1)),
        num_cpus=actor_cpus, num_gpus=1 if gpu else 0,
    )


def segments_dataset(videos: list[str], sampling: Sampling, finished, task_cpus: float):
    """The videos' segments (vitpose_batch.pipeline.video_segments: a scan task per video), one segment per block.

    A video's scan gives all its segments at once, and a map task joins what it yields into one block: left so, a
    video's segments would reach one actor call, in one task, its rows only when the last is done. One segment per
    block spreads a long video over every actor and sends each segment's rows to the driver as it ends."""
    import ray

    names = ray.data.from_items([{"video_uri": v} for v in videos], override_num_blocks=min(len(videos), 10_000))
    segments = names.map_batches(video_segments, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus,
                                 fn_kwargs={"sampling": sampling, "finished": ray.put(finished)})
    return segments.repartition(target_num_rows_per_block=1)


def actor_plan(opts: AnnotateOptions) -> tuple[str, int, float, int | None, bool]:
    """(device, actors, CPUs per actor, threads per actor, on GPUs) for this cluster (see plan_actors)."""
    import ray

    resources = ray.cluster_resources()
    device = ("cuda" if resources.get("GPU", 0) else "cpu") if opts.device == "auto" else opts.device
    actors, actor_cpus, threads = plan_actors(resources, device, opts)
    return device, actors, actor_cpus, threads, device.startswith("cuda")


def pose_rows(opts: AnnotateOptions, items, box_index):
    """Detection and ViTPose on an actor pool sized to the cluster (see plan_actors): a Dataset of rows."""
    device, actors, actor_cpus, threads, gpu = actor_plan(opts)
    if opts.read_tasks if opts.read_tasks is not None else gpu:
        # CPU tasks read the files, so the GPU never waits on storage; encoded bytes, not pixels, cross the object
        # store. CPU actors read for themselves: there the actors are the compute, and tasks beside them preempt
        # torch's threads (2 cores: +40% per batch, measured).
        items = items.map_batches(read_batch, batch_size=opts.batch_size, batch_format="pyarrow",
                                  num_cpus=opts.decode_cpus)
    calls = opts.calls_per_actor or (2 if gpu else 1)
    return items.map_batches(
        PoseWorker,
        fn_constructor_kwargs={
            "model": opts.model, "detector": None if opts.boxes else opts.detector, "device": device,
            "dtype": opts.dtype, "flip_test": opts.flip_test, "dataset_index": opts.dataset_index,
            "crops_per_forward": opts.crops_per_forward, "threads": threads, "boxes": box_index,
            "compile": opts.compile,
        },
        batch_size=opts.batch_size,
        batch_format="pyarrow",
        compute=actor_pool(actors, calls),
        num_cpus=actor_cpus,
        num_gpus=1 if gpu else 0,
        # Ray Data's actor pools restart a dead actor and re-run its batch (max_restarts / max_task_retries -1).
    )


def write_rows(opts: AnnotateOptions, run: SessionRun, rows, videos, total: int | None, summary: Summary,
               sigmas=()) -> None:
    """Stream the rows to the driver, images' then videos' (Datasets, or None), and commit them under OUTPUT
    (vitpose_batch.output.parts); the run's counts into `summary`."""
    output = run.output
    diagnostics = Diagnostics(summary.dropped)
    progress = Progress(total)
    writer = run.writer(PREDICTION_SCHEMA, rows_per_file=opts.rows_per_file, commit_interval=opts.commit_interval)
    try:
        if rows is not None:
            for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(diagnostics.take(batch))
                progress.update(batch.num_rows)
        if videos is not None:
            tracks = VideoRows(np.asarray(sigmas), output_lookup(lambda columns: parts.iter_part_tables(
                output, columns)))
            for batch in videos.iter_batches(batch_size=None, batch_format="pyarrow"):
                for table in tracks.take(diagnostics.take(batch)):
                    writer.add(table)
                    summary.frames += table.num_rows
                    progress.update(table.num_rows)
            for table in tracks.close():
                writer.add(table)
                summary.frames += table.num_rows
        writer.close()
    except leases.LeaseLost:
        raise  # another run owns OUTPUT now: write nothing more
    except BaseException:
        try:
            writer.close()  # the rows that arrived are good rows: commit them as the run's last part
        except BaseException:
            writer.abort()  # or at least to _staging/, where the next run folds them in
        raise
    finally:
        progress.close()
        for key in ("images", "persons", "errors", "files"):
            setattr(summary, key, writer.totals[key])
        summary.retried_batches = diagnostics.retried_batches
    arrivals = writer.arrivals
    if len(arrivals) > 2 and arrivals[-1][0] > arrivals[0][0]:
        later = sum(persons for _, persons in arrivals[1:])
        summary.steady_crops_per_s = later / (arrivals[-1][0] - arrivals[0][0])


def count_unmatched(chunks, box_index, summary: Summary):
    """Pass listing chunks through, counting the images the boxes file does not know (summary.images_without_boxes)."""
    for chunk in chunks:
        for uri, image_id in zip(chunk.column("image_uri").to_pylist(), chunk.column("image_id").to_pylist()):
            summary.images_without_boxes += not box_index.knows(file_name=box_index.name_for(uri), image_id=image_id)
        yield chunk


def _chain(first, rest):
    yield first
    yield from rest


def _keys(redo: dict[bytes, tuple[str, str]]):
    if not redo:
        return np.zeros((0, 2), np.uint64)
    return np.frombuffer(b"".join(redo), dtype=np.uint64).reshape(-1, 2)


def run_record_extra(opts: AnnotateOptions, summary: Summary) -> dict:
    """What annotate adds to its `_runs/<run>.json` (vitpose_batch.output.runs): what render and report need to
    read shard rows back (the image column and root), the boxes left out, the videos' sampling."""
    return {"retry_errors": opts.retry_errors, "dropped_boxes": summary.dropped.record(),
            "image_column": opts.image_column, "image_root": opts.image_root, "videos": summary.videos,
            "frames": summary.frames}
