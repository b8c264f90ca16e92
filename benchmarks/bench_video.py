"""Video path on one core: bare PyAV decoding, our `decode_frames`, and the video actor's whole path, side by side.

    python -m benchmarks.bench_video [--video PATH ...] [--frames 100] [--segment-s 2.0] [--repeats 3]

One core: torch and onnxruntime at 1 thread, the decoder at 1 thread (the process is not pinned: on a shared machine
the CPU-time figures are the steadier ones). Per video, the first `--frames` frames (default: the walkers and
tai_chi videos of ../shared/data/videos), measured in one run:

* (a) bare PyAV: `container.decode` -> `frame.to_ndarray("rgb24")`, from the start (frames/s, best of --repeats);
* (b) `vitpose_batch.video.decoding.decode_frames` over the same frames, given the index `scan` made (frames/s, its
  overhead against (a)); `scan` itself (ms, all the file's packets) apart;
* (c) the video actor's path in this process, as the job runs it: `segments_of` (the scan task; apart), one
  `VideoWorker` call per segment row (tiny random-weight ViTPose, yolox_nano), the tables through `VideoRows` (the
  driver). frames/s of the actor + driver, and where each frame's time goes: decode (the worker's `decode_frames`
  generator, with its pre-roll: frames from the keyframe before a segment's start), detect and model
  (`PoseEstimator`'s StageClock: VideoWorker takes no clock, so one is set on its estimator), crop, heatmaps, track
  (`PoseTracker.step`), rest (rows, Arrow, the driver's joining), in CPU ms (this thread's CPU time: steadier than
  wall time on a shared machine); "host" = everything outside the detector and the model;
* (d) `--detect-every` 1, 5, 10: detector calls per output frame (the worker's `detector_frames` / frames; a
  segment's anchor frame is labelled by two segments, so 1 is a little over 1) and frames/s.

With the tiny model the model costs almost nothing and its keypoints are noise: with --detect-every above 1 the
boxes between detector frames come from noise poses (timing only; such boxes mean something only with trained
weights). Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa

SHARED = Path(os.environ.get("VITPOSE_SHARED", ROOT.parent / "shared"))
VIDEOS = ("walkers_vtest_5s.mp4", "tai_chi.mp4")
DETECT_EVERY = (1, 5, 10)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def alternating(fns: list, repeats: int) -> list[tuple[float, float]]:
    """Per fn, (wall s, CPU s) of its fastest of `repeats` runs (by wall); the fns run in turn, side by side."""
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, runs):
            start = clocks()
            fn()
            out.append(since(start))
    return [min(out) for out in runs]


def bare_decode(path: str, frames: int) -> int:
    """Bare PyAV: the first `frames` frames in decoder order to RGB arrays, one decoder thread."""
    import av

    done = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            done += 1
            if done == frames:
                break
    return done


def ours_decode(path: str, index, frames: int) -> int:
    from vitpose_batch.video.decoding import decode_frames

    return sum(1 for _ in decode_frames(path, path, index, np.arange(frames), 0, frames, threads=1))


def first_frames(segments: pa.Table, frames: int) -> pa.Table:
    """The segment rows cut to the video's first `frames` frames (the last kept segment gets no anchor)."""
    from vitpose_batch.pipeline.video_segments import SEGMENT_SCHEMA

    rows = []
    for row in segments.to_pylist():
        keep = [i for i, f in enumerate(row["frames"]) if f < frames]
        if not keep:
            continue
        row["frames"] = [row["frames"][i] for i in keep]
        row["emit"] = [row["emit"][i] for i in keep]
        if row["anchor"] is not None and row["anchor"] >= frames:
            row["anchor"] = None
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)


class Timers:
    """Seconds (wall, CPU of this thread) spent in the worker's decode generator and its trackers' steps."""

    def __init__(self) -> None:
        self.decode = [0.0, 0.0]
        self.track = [0.0, 0.0]

    def add(self, which: list[float], wall: float, cpu: float) -> None:
        which[0] += wall
        which[1] += cpu

    def install(self) -> None:
        """Wrap video_worker's decode_frames and PoseTracker (this process only)."""
        from vitpose_batch.pipeline import video_worker
        from vitpose_batch.video.decoding import decode_frames
        from vitpose_batch.video.tracking import PoseTracker

        timers = self

        def timed_decode(*args, **kwargs):
            frames = decode_frames(*args, **kwargs)
            while True:
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    item = next(frames)
                except StopIteration:
                    timers.add(timers.decode, time.perf_counter() - wall, time.thread_time() - cpu)
                    return
                timers.add(timers.decode, time.perf_counter() - wall, time.thread_time() - cpu)
                yield item

        class TimedTracker(PoseTracker):
            def step(self, *args, **kwargs):
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    return super().step(*args, **kwargs)
                finally:
                    timers.add(timers.track, time.perf_counter() - wall, time.thread_time() - cpu)

        video_worker.decode_frames = timed_decode
        video_worker.PoseTracker = TimedTracker


def run_path(worker, segments: pa.Table, detect_every: int, frames: int, timers: Timers) -> dict:
    """The actor's calls on every segment row, then the driver's VideoRows; figures per output frame."""
    from vitpose_batch.pipeline.video_rows import VideoRows
    from vitpose_core.stage_clock import StageClock

    worker.detect_every = detect_every
    worker.detector_frames = worker.followed_frames = 0
    clock = StageClock()
    worker.pose.estimator.clock = clock
    timers.decode, timers.track = [0.0, 0.0], [0.0, 0.0]
    start = clocks()
    tables = [pa.concat_tables(list(worker(segments.slice(i, 1)))) for i in range(segments.num_rows)]
    rows = VideoRows(np.asarray(worker.keypoint_set.sigmas), lambda uris: {})
    out = [t for table in tables for t in rows.take(table)] + list(rows.close())
    wall, cpu = since(start)
    worker.pose.estimator.clock = None
    written = sum(t.num_rows for t in out)
    ids = {p["track_id"] for t in out for persons in t.column("persons").to_pylist() for p in persons}
    stages = clock.totals()

    def stage(name: str) -> tuple[float, float]:
        s = stages.get(name)
        return (s.wall_s, s.cpu_s) if s else (0.0, 0.0)

    parts = {"decode": tuple(timers.decode), "detect": stage("detect"), "crop": stage("crop"),
             "model": stage("model"), "heatmaps": stage("heatmaps"), "track": tuple(timers.track)}
    rest = (wall - sum(p[0] for p in parts.values()), cpu - sum(p[1] for p in parts.values()))
    ms = {k: 1000 * v[0] / frames for k, v in parts.items()} | {"rest": 1000 * rest[0] / frames}
    cpu_ms = {k: 1000 * v[1] / frames for k, v in parts.items()} | {"rest": 1000 * rest[1] / frames}
    return {"frames": written, "fps": frames / wall, "cpu_fps": frames / cpu, "tracks": len(ids),
            "detector_per_frame": worker.detector_frames / frames, "followed": worker.followed_frames,
            "host_ms": 1000 * (wall - parts["detect"][0] - parts["model"][0]) / frames,
            "host_cpu_ms": 1000 * (cpu - parts["detect"][1] - parts["model"][1]) / frames, "ms": ms,
            "cpu_ms": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", action="append", help="a video file (repeatable); default: walkers, tai_chi")
    parser.add_argument("--frames", type=int, default=100, help="the first N frames of each video")
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="decode runs; the best is kept")
    parser.add_argument("--detector", default=str(SHARED / "models" / "yolox_nano.onnx"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from tests import checkpoint_factory as factory
    from vitpose_batch.pipeline.video_segments import Sampling, segments_of
    from vitpose_batch.pipeline.video_worker import VideoWorker
    from vitpose_batch.video.decoding import scan

    videos = args.video or [str(SHARED / "data" / "videos" / name) for name in VIDEOS]
    timers = Timers()
    timers.install()
    with tempfile.TemporaryDirectory(prefix="bench-video-") as work:
        model = Path(work) / "tiny"
        factory.save_hf(factory.hf_model(hidden=32, heads=2, depth=1, seed=7), model)
        worker = VideoWorker(str(model), args.detector, "cpu", None, False, None, None, 1)
        print(f"one core: torch {torch.get_num_threads()} thread, onnxruntime 1 thread, decoder 1 thread; "
              f"{os.cpu_count()} CPUs on the machine; tiny random ViTPose (1 layer, 32 wide), "
              f"{Path(args.detector).name}; segment_s {args.segment_s}")
        for path in videos:
            start = clocks()
            index = scan(path, path)
            scan_s = since(start)[0]
            frames = min(args.frames, index.frame_count)
            warm = next(iter(ours_decode_images(path, index, 1)))
            worker.pose.estimator([warm])  # warm-up: onnxruntime's and torch's first calls
            bare, ours = alternating([lambda p=path, n=frames: bare_decode(p, n),
                                      lambda p=path, i=index, n=frames: ours_decode(p, i, n)], args.repeats)
            segments_of(path, Sampling(segment_s=args.segment_s))  # warm-up: first use of the file system layer
            start = clocks()
            segments = first_frames(segments_of(path, Sampling(segment_s=args.segment_s)), frames)
            segments_s = since(start)[0]
            runs = {n: run_path(worker, segments, n, frames, timers) for n in DETECT_EVERY}

            print(f"\n{Path(path).name}: {index.width}x{index.height} {index.codec}, {index.frame_count} frames, "
                  f"first {frames} measured, {segments.num_rows} segments; scan {1000 * scan_s:.0f} ms, "
                  f"segments_of {1000 * segments_s:.0f} ms")
            print(f"  {'':<34}{'frames/s':>9}{'(CPU)':>9}  vs bare")
            print(f"  {'(a) bare PyAV decode + rgb24':<34}{frames / bare[0]:9.1f}{frames / bare[1]:9.1f}  1.00x")
            print(f"  {'(b) decode_frames':<34}{frames / ours[0]:9.1f}{frames / ours[1]:9.1f}  "
                  f"{bare[0] / ours[0]:.2f}x (overhead {100 * (ours[0] / bare[0] - 1):+.0f}% wall, "
                  f"{100 * (ours[1] / bare[1] - 1):+.0f}% CPU)")
            one = runs[1]
            print(f"  {'(c) actor path, --detect-every 1':<34}{one['fps']:9.1f}{one['cpu_fps']:9.1f}  "
                  f"{one['fps'] * bare[0] / frames:.2f}x; {one['frames']} rows, {one['tracks']} track ids")
            print(f"      host work outside detector and model: {one['host_ms']:.1f} ms/frame wall, "
                  f"{one['host_cpu_ms']:.1f} ms/frame CPU; bare decode alone {1000 * bare[0] / frames:.1f} ms")
            print(f"      decoder pre-roll: {preroll(index, segments)} frames decoded and dropped before segments' "
                  f"starts (no keyframe near the cut), {segments.num_rows - 1} anchor frames labelled twice")
            print("  (d) CPU ms per output frame      " + "".join(f"{k:>9}" for k in one["cpu_ms"])
                  + f"{'host':>9}{'det/frame':>10}{'frames/s':>9}{'(CPU)':>8}{'tracks':>7}")
            for n, r in runs.items():
                print(f"      --detect-every {n:<14}" + "".join(f"{v:9.1f}" for v in r["cpu_ms"].values())
                      + f"{r['host_cpu_ms']:9.1f}{r['detector_per_frame']:10.2f}{r['fps']:9.1f}{r['cpu_fps']:8.1f}"
                      + f"{r['tracks']:7d}")


def preroll(index, segments: pa.Table) -> int:
    """Frames the worker decodes only to reach its segment's start: from the keyframe at or before it."""
    keys = np.asarray(index.keyframes, np.int64)
    total = 0
    for start in segments.column("start").to_pylist():
        before = keys[keys <= start]
        total += start - int(before[-1]) if len(before) else start
    return total


def ours_decode_images(path: str, index, frames: int):
    from vitpose_batch.video.decoding import decode_frames

    for _, _, image in decode_frames(path, path, index, np.arange(frames), 0, frames, threads=1):
        yield image


if __name__ == "__main__":
    main()
