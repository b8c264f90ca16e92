"""Resume at scale: the decision time and driver memory of resuming a 10^7-image OUTPUT, and files per 10^6 images.

    python benchmarks/bench_resume.py [--images 10000000] [--new 0.01] [--workdir DIR]

Fabricates (no image files needed) an OUTPUT of `--images` committed rows in right-sized parts, then, in a fresh
process, makes the resume decision against a listing of as many images of which `--new` are not yet done: the scan
of every part's `image_uri`, and the streamed anti-join of the listing. Prints the decision time and that process's
peak RSS. Then writes 10^6 rows through the job's own PartWriter and prints how many Parquet files they became.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from vitpose_batch.output import parts, resume  # noqa: E402
from vitpose_batch.output.layout import Output  # noqa: E402
from vitpose_batch.schemas.predictions import FRAME_FIELDS, PREDICTION_SCHEMA  # noqa: E402

PREFIX = "s3://corpus-bucket/photos/2026/11/24"


def uri(i: int) -> str:
    return f"{PREFIX}/shard-{i // 10_000:05d}/img-{i:010d}.jpg"


def rows(start: int, stop: int) -> pa.Table:
    n = stop - start
    return pa.table({
        "image_uri": [uri(i) for i in range(start, stop)], "image_id": pa.nulls(n, pa.int64()),
        "width": pa.array([640] * n, pa.int32()), "height": pa.array([480] * n, pa.int32()),
        "persons": pa.array([[]] * n, PREDICTION_SCHEMA.field("persons").type),
        "error": pa.nulls(n, pa.string()), "error_retryable": pa.nulls(n, pa.bool_()),
        **{f.name: pa.nulls(n, f.type) for f in FRAME_FIELDS},
    }, schema=PREDICTION_SCHEMA)


def fabricate(output: str, images: int) -> int:
    opened = Output.open(output)
    fs, folder = opened.fs, opened.folder
    files = 0
    for seq, start in enumerate(range(0, images, parts.DEFAULT_ROWS_PER_FILE)):
        stop = min(images, start + parts.DEFAULT_ROWS_PER_FILE)
        parts.write_parquet_atomic(fs, rows(start, stop), f"{folder}/{parts.part_name('fabricated', seq)}")
        files += 1
    return files


def listing(images: int, new_share: float, chunk: int = 65_536):
    """A listing of `images` URIs: the committed ones, with every 1/new_share-th replaced by a new image."""
    step = max(1, round(1 / new_share)) if new_share else 0
    for start in range(0, images, chunk):
        stop = min(images, start + chunk)
        uris = [uri(i) if not step or i % step else uri(i + 10 * images) for i in range(start, stop)]
        yield pa.table({"image_uri": uris, "image_id": pa.nulls(len(uris), pa.int64())})


def decide(output: str, images: int, new_share: float) -> None:
    """The resume decision alone (run in its own process, so its peak RSS is the decision's)."""
    start = time.perf_counter()
    state = resume.scan_output(Output.open(output))
    scanned = time.perf_counter() - start
    plan = resume.ResumePlan()
    for _ in resume.filter_listing(listing(images, new_share), state, plan):
        pass  # the job puts each chunk in Ray's object store here
    total = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"resume decision over {state.rows:,} committed rows in {state.files} parts and a listing of "
          f"{plan.listed:,} images: {total:.1f} s (scan {scanned:.1f} s, anti-join {total - scanned:.1f} s), "
          f"{plan.new:,} new, {plan.already_done:,} already done; driver peak RSS {peak_mib:,.0f} MiB")


def files_per_million(workdir: str) -> None:
    output = os.path.join(workdir, "million")
    writer = parts.PartWriter(Output.open(output), "bench", PREDICTION_SCHEMA, {})
    for start in range(0, 1_000_000, 1_000):  # rows arrive from the actors a batch at a time
        writer.add(rows(start, start + 1_000))
    writer.close()
    count = len(list(Path(output).glob("*.parquet")))
    size = sum(p.stat().st_size for p in Path(output).glob("*.parquet")) / 2**20
    print(f"1,000,000 images -> {count} Parquet files ({size:.0f} MiB, {parts.DEFAULT_ROWS_PER_FILE:,} rows each; "
          f"the per-batch sink this replaces wrote 62,500)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000_000)
    parser.add_argument("--new", type=float, default=0.01, help="share of the listing not yet done")
    parser.add_argument("--workdir", help="where to fabricate (default: a temporary folder, removed after)")
    parser.add_argument("--decide", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decide:
        decide(args.decide, args.images, args.new)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-resume-")
    try:
        output = os.path.join(workdir, "out")
        start = time.perf_counter()
        files = fabricate(output, args.images)
        print(f"fabricated {args.images:,} committed rows in {files} parts in {time.perf_counter() - start:.0f} s")
        subprocess.run([sys.executable, __file__, "--decide", output, "--images", str(args.images),
                        "--new", str(args.new)], check=True)
        files_per_million(workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
