"""`vitpose-batch`: annotate images with keypoints, evaluate them, export and render them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from vitpose_batch.pipeline import signals
from vitpose_batch.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMMIT_INTERVAL_S,
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    DEFAULT_ROWS_PER_FILE,
    KEYPOINT_THRESHOLD,
    OKS_THRESHOLD,
)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states every option's default (unless its help already does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default is argparse.SUPPRESS or not action.option_strings
        return text if quiet or "(default" in text else f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are one line on stderr (exit 2), like every other refusal of the CLI, and whose help
    shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: `kind` within [low, high] (low excluded when low_open), refused in words otherwise."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if low_open else '>='} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be <= {high:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("vitpose-batch")
    except PackageNotFoundError:
        return "unknown (not installed)"


POSITIVE = number(int, 1)
SCORE = number(float, 0.0, 1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vitpose-batch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vitpose-batch {version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    annotate = commands.add_parser("annotate", help="put keypoints on every image of INPUT, rows under OUTPUT")
    annotate.add_argument("input", help="folder / prefix / glob of images and videos (.mp4 .mov .mkv .avi .webm), "
                                        ".tar or Parquet shards, or a COCO JSON; "
                                        "a name that exists is read as exactly that path (any characters); only "
                                        "when nothing exists under it is a name holding * ? [ a glob")
    annotate.add_argument("output", help="folder or prefix receiving Parquet part files")
    annotate.add_argument("--model", default=DEFAULT_MODEL,
                          help="ViTPose: HF folder (or its s3:// / gs:// URI), original .pth, or Hugging Face hub id "
                               "(the default is a hub id: it needs the hub or a local hub cache)")
    boxes = annotate.add_mutually_exclusive_group()
    boxes.add_argument("--detector", default=DEFAULT_DETECTOR,
                       help="person detector: YOLOX / RTMDet .onnx, transformers folder, or Hugging Face hub id "
                            "(the default is the seed page's RT-DETR, a hub id: it needs the hub or its cache)")
    boxes.add_argument("--boxes", help="person boxes instead of a detector: COCO annotations or detection results")
    annotate.add_argument("--image-root", help="where a COCO JSON INPUT's file_name entries live")
    annotate.add_argument("--image-column", help="Parquet shards: the image column (encoded bytes, or a "
                                                 "datasets-style struct<bytes, path>)")
    annotate.add_argument("--flip-test", action="store_true", help="average with mirrored crops")
    annotate.add_argument("--dataset-index", type=number(int, 0),
                          help="ViTPose++ dataset (0 COCO ... 5 COCO-WholeBody)")
    annotate.add_argument("--batch-size", type=POSITIVE, default=DEFAULT_BATCH_SIZE,
                          help=f"images per actor call (default {DEFAULT_BATCH_SIZE})")
    annotate.add_argument("--crops-per-forward", type=POSITIVE, help="crops per model forward (default 8 CPU, 64 GPU)")
    annotate.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else Ray in-process)")
    annotate.add_argument("--coco-json", help="also write COCO keypoint results to this file")
    annotate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                          help="auto (cuda when the cluster has GPUs), cpu, cuda")
    annotate.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="model precision (default fp32)")
    annotate.add_argument("--actors", type=POSITIVE, help="pose actors at most (default: one per GPU, or CPUs allow)")
    annotate.add_argument("--cpus-per-actor", type=number(float, 0.0, low_open=True),
                          help="CPUs each pose actor asks for (default: 4 at most on GPUs, all but one on CPUs)")
    annotate.add_argument("--compile", action="store_true",
                          help="torch.compile the model in every actor: a slower start for faster batches")
    annotate.add_argument("--retry-errors", action="store_true",
                          help="redo every error row (by default a re-run redoes only failures that may pass)")
    annotate.add_argument("--rows-per-file", type=POSITIVE, default=DEFAULT_ROWS_PER_FILE,
                          help=f"rows per Parquet part (default {DEFAULT_ROWS_PER_FILE:,}; fewer only in a run's last)")
    video = annotate.add_argument_group(
        "videos", "one row per sampled frame (every frame by default), persons tracked; videos need --detector "
                  "(--boxes names images' persons); these settings are part of OUTPUT's provenance, like --model")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--frame-rate", type=number(float, 0.0, low_open=True), metavar="F",
                          help="label the frames nearest to every 1/F seconds (presentation times)")
    sampling.add_argument("--every-nth-frame", type=POSITIVE, metavar="N", help="label frames 0, N, 2N, ...")
    video.add_argument("--detect-every", type=POSITIVE, default=1, metavar="N",
                       help="run the detector on every Nth labelled frame; between, boxes come from the previous "
                            "poses (default 1: every frame)")
    video.add_argument("--segment-seconds", type=number(float, 0.0, low_open=True), default=60.0, metavar="S",
                       help="videos are cut into segments of about S seconds (at keyframes) that run in parallel "
                            "(default 60)")
    annotate.add_argument("--commit-interval", type=number(float, 0.0), default=DEFAULT_COMMIT_INTERVAL_S,
                          help="seconds between commits of finished rows: the most work a killed run loses "
                               f"(default {DEFAULT_COMMIT_INTERVAL_S:.0f})")

    evaluate = commands.add_parser("evaluate", help="COCO keypoint AP of predictions against a COCO ground truth")
    evaluate.add_argument("predictions", help="annotate OUTPUT (folder / prefix / .parquet) or a COCO results JSON")
    evaluate.add_argument("--ground-truth", required=True, help="COCO keypoints annotation file")
    evaluate.add_argument("--raw", action="store_true",
                          help="score the predictions as given (pycocotools' COCOeval), without ViTPose's protocol")
    evaluate.add_argument("--output", help="also write the metrics as JSON here")

    export = commands.add_parser("export-coco", help="annotate output -> COCO results or a COCO dataset")
    export.add_argument("predictions", help="annotate OUTPUT (folder / prefix) or one .parquet file")
    export.add_argument("output_json", help="the JSON file to write (local or fsspec URL)")
    export.add_argument("--format", choices=["results", "dataset"], default="results",
                        type=lambda name: name.removeprefix("coco-"),  # export's names (coco-dataset) work too
                        help="results: [{image_id, keypoints, score}]; dataset: images + annotations + categories "
                             "(coco-results / coco-dataset, as `export` names them, are the same)")
    export.add_argument("--min-person-score", type=SCORE, default=0.0, help="leave out persons scored below")
    export.add_argument("--min-keypoint-score", type=SCORE, default=0.0,
                        help="dataset format: keypoints scored below are exported unlabelled (v=0)")

    export_to = commands.add_parser(
        "export", help="annotate output -> COCO results, a COCO dataset, Label Studio tasks, PoseTrack or mmaction2",
        description="Write an annotate OUTPUT as COCO keypoint results, a COCO keypoints dataset (pseudo-labels; "
                    "each annotation's `area` is its person box's w*h) or Label Studio import tasks (a JSON list, "
                    "one task per image; its labeling config goes beside it as <OUTPUT stem>.label_config.xml); "
                    "or its videos' frame rows (image rows left out) as PoseTrack 2018 JSON, one file per video, "
                    "or an mmaction2 skeleton pickle (PoseDataset).")
    export_to.add_argument("predictions", help="annotate OUTPUT (folder / prefix) or one .parquet file")
    export_to.add_argument("output", help="the JSON file to write (local or fsspec URL); posetrack: a folder "
                                          "receiving <video name>.json per video; mmaction: a .pkl file")
    export_to.add_argument("--format", required=True,
                           choices=["coco-results", "coco-dataset", "label-studio", "posetrack", "mmaction"],
                           type=lambda name: f"coco-{name}" if name in ("results", "dataset") else name,
                           help="coco-results: [{image_id, keypoints, score}] as predicted (or: results); "
                                "coco-dataset (or: dataset): images + "
                                "annotations (area = person box w*h) + categories; label-studio: import tasks with "
                                "the persons as predictions, plus <OUTPUT stem>.label_config.xml; posetrack: per "
                                "video, images (frames) + annotations with track_id + categories; mmaction: a list "
                                "of per-video dicts, keypoint [M persons, T frames, V keypoints, 2]")
    export_to.add_argument("--min-person-score", type=SCORE, default=0.0, help="leave out persons scored below")
    export_to.add_argument("--keypoint-threshold", type=SCORE, default=KEYPOINT_THRESHOLD,
                           help="keypoints scored below are left out (label-studio) or written unlabelled as "
                                "(0, 0, 0) (coco-dataset); coco-results keeps every keypoint with its score")
    nms = export_to.add_mutually_exclusive_group()
    nms.add_argument("--oks-nms", type=SCORE, default=OKS_THRESHOLD, metavar="THRESHOLD",
                     help="coco-dataset, label-studio: per image, drop a person whose OKS (the keypoint set's "
                          "sigmas) with a better-scored one is above THRESHOLD, as ViTPose's evaluation does")
    nms.add_argument("--no-oks-nms", action="store_true", help="keep every person (no OKS-NMS)")
    export_to.add_argument("--image-prefix", type=image_prefix, action="append", default=[], metavar="OLD=NEW",
                           help="label-studio: rewrite image URIs starting with OLD to start with NEW (repeatable; "
                                "the longest OLD wins), e.g. /data/photos/=/data/local-files/?d=photos/ or "
                                "s3://bucket/=https://cdn.example.com/ (default: none)")
    export_to.add_argument("--skip-errors", action="store_true",
                           help="label-studio: leave out error rows (by default they become tasks without "
                                "predictions whose data.error says what failed)")
    export_to.add_argument("--track-ids", choices=["preserve", "dense"], default="preserve",
                           help="posetrack: preserve the rows' track ids, or renumber each video's tracks 0, 1, ... "
                                "(dense: poseval wants ids below 10000)")

    render = commands.add_parser("render", help="draw keypoints and skeletons on a sample of annotated images, "
                                                "and videos as MP4s with their track ids")
    render.add_argument("predictions", help="annotate OUTPUT (folder / prefix) or one .parquet file")
    render.add_argument("outdir", help="folder (local or fsspec URL) receiving one JPEG per sampled image and "
                                       "one <video name>.mp4 per rendered video (one frame per sampled frame)")
    render.add_argument("--sample", type=number(int, 0), default=16,
                        help="how many images, and how many videos (the first N by video_uri)")
    render.add_argument("--pick", choices=["random", "lowest", "median", "highest"], default="random",
                        help="which images: a seeded random sample, or those holding the lowest-scored persons, "
                             "the most typical (median) ones, or the highest-scored (videos: always the first N)")
    render.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    render.add_argument("--min-person-score", type=SCORE, default=0.0, help="draw only persons scored at least this")
    render.add_argument("--keypoint-threshold", type=SCORE, default=KEYPOINT_THRESHOLD, help="draw only keypoints scored above this")

    report = commands.add_parser("report", help="one self-contained HTML page about an annotate OUTPUT")
    report.add_argument("predictions", metavar="PREDICTIONS",
                        help="annotate OUTPUT (folder / prefix, local or fsspec URL) or one .parquet file")
    report.add_argument("report_html", metavar="REPORT_HTML",
                        help="the HTML file to write (local or fsspec URL); images and plots embedded")
    report.add_argument("--ground-truth", metavar="COCO_JSON",
                        help="COCO keypoints annotation file: adds the AP table (and the detector's box AP when a "
                             "detector made the boxes); default: no AP table")
    report.add_argument("--sample", type=number(int, 0), default=12, metavar="N",
                        help="persons drawn on their images: the lowest-, median- and highest-scored (default 12)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if threading.current_thread() is threading.main_thread():
        signals.install()
    if args.command != "annotate":  # annotate counts its images itself
        from vitpose_batch import progress

        progress.SHOW_READS = True
    try:
        return COMMANDS[args.command](args)
    except signals.Stopped as stop:
        print(f"vitpose-batch {args.command}: {stopped_line(stop, args)}", file=sys.stderr)
        return 128 + stop.signum
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line and a non-zero status
        print(f"vitpose-batch {args.command}: error: {one_line_reason(exc)}", file=sys.stderr)
        return 2


def stopped_line(stop: signals.Stopped, args: argparse.Namespace) -> str:
    summary = getattr(stop, "summary", None)
    if args.command != "annotate":
        return f"stopped by {stop}"
    if summary is None:
        return f"stopped by {stop} before any work; OUTPUT {args.output} is as it was"
    return (f"stopped by {stop}: {summary.images} images of this run are committed under {args.output} (with "
            f"{summary.skipped} from before); the same command resumes from there")


def one_line_reason(exc: BaseException) -> str:
    """The user-facing reason: a Ray task failure is reported by its cause, not Ray's traceback."""
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(str(exc).split()) or type(exc).__name__
    known = isinstance(exc, (ValueError, FileNotFoundError, PermissionError))
    return text if known else f"{type(exc).__name__}: {text}"


def annotate_command(args: argparse.Namespace) -> int:
    from vitpose_batch.pipeline.job import AnnotateOptions, run_annotate
    from vitpose_batch.pipeline.video_segments import Sampling

    options = AnnotateOptions(
        input=args.input, output=args.output, model=args.model,
        detector=None if args.boxes else args.detector, boxes=args.boxes, image_root=args.image_root,
        image_column=args.image_column, flip_test=args.flip_test, dataset_index=args.dataset_index,
        batch_size=args.batch_size, crops_per_forward=args.crops_per_forward, ray_address=args.ray_address,
        coco_json=args.coco_json, device=args.device, dtype=args.dtype, actors=args.actors,
        cpus_per_actor=args.cpus_per_actor, retry_errors=args.retry_errors, rows_per_file=args.rows_per_file,
        commit_interval=args.commit_interval, compile=args.compile,
        sampling=Sampling(frame_rate=args.frame_rate, every_nth_frame=args.every_nth_frame,
                          detect_every=args.detect_every, segment_s=args.segment_seconds),
    )
    summary = run_annotate(options)
    for line in summary.lines():
        print(line)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from vitpose_batch.review.evaluate import evaluate, format_table
    from vitpose_core.filesystems import open_uri  # lazy: --help imports no fsspec

    report = evaluate(args.predictions, args.ground_truth, raw=args.raw)
    print(format_table(report))
    if args.output:
        with open_uri(args.output, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from vitpose_batch.review.export import export_coco

    stats = export_coco(args.predictions, args.output_json, fmt=args.format,
                        min_person_score=args.min_person_score, min_keypoint_score=args.min_keypoint_score)
    print(json.dumps(stats, default=str))
    return 0


def image_prefix(text: str) -> tuple[str, str]:
    """argparse type of --image-prefix: OLD=NEW."""
    from vitpose_batch.review.label_studio import parse_image_prefix

    try:
        return parse_image_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def export_to_command(args: argparse.Namespace) -> int:
    from vitpose_batch.review.export import export

    stats = export(args.predictions, args.output, args.format, min_person_score=args.min_person_score,
                   keypoint_threshold=args.keypoint_threshold, oks_nms=None if args.no_oks_nms else args.oks_nms,
                   image_prefixes=args.image_prefix, skip_errors=args.skip_errors, track_ids=args.track_ids)
    print(json.dumps(stats, default=str))
    return 0


def render_command(args: argparse.Namespace) -> int:
    from vitpose_batch.review.render import render

    written = render(args.predictions, args.outdir, sample=args.sample, seed=args.seed,
                     min_person_score=args.min_person_score, keypoint_threshold=args.keypoint_threshold,
                     pick=args.pick)
    videos = sum(path.endswith(".mp4") for path in written)
    nothing = " (nothing to draw: no row without an error, or --sample 0)" if not written else ""
    print(f"rendered {len(written) - videos} images and {videos} videos into {args.outdir}{nothing}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from vitpose_batch.review.report import report  # matplotlib and friends only when a report is made: --help stays instant

    done = report(args.predictions, args.report_html, ground_truth=args.ground_truth, sample=args.sample)
    videos = (f" ({done['videos']:,} videos: {done['frames']:,} frames, {done['tracks']:,} tracks)"
              if done.get("videos") else "")
    print(f"report of {done['images']:,} images{videos}, {done['persons']:,} persons, {done['errors']:,} error rows "
          f"written to {args.report_html}")
    return 0


COMMANDS = {"annotate": annotate_command, "evaluate": evaluate_command, "export-coco": export_command,
            "export": export_to_command,
            "render": render_command, "report": report_command}


def entry() -> None:
    """The `vitpose-batch` console script: annotate runs in a watched child process (see vitpose_batch.pipeline.supervisor)."""
    import os

    from vitpose_batch.pipeline.supervisor import SUPERVISED, supervise

    argv = sys.argv[1:]
    if argv[:1] == ["annotate"] and not os.environ.get(SUPERVISED):
        build_parser().parse_args(argv)  # refusals of the command line stay one line, from here
        sys.exit(supervise(argv))
    code = main(argv)
    if argv[:1] != ["annotate"]:
        # A review command's files are written whole and closed by now. Interpreter teardown is skipped: with PyAV's
        # FFmpeg and pyarrow loaded in one process, a native thread pool can abort it ("terminate called without an
        # active exception", exit 134) after all the work is done, depending on the order the libraries loaded.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
