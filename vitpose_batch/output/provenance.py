"""What made the rows of an OUTPUT, fixed when the OUTPUT is created: `OUTPUT/_job.json`.

The settings that change what a row says (the model and a fingerprint of its weights, the detector or boxes file and
its fingerprint, flip test, dataset index, precision and the heatmap decoding) are written once, by the run that
creates the OUTPUT, and never rewritten. A later run whose settings differ is refused with one line naming the
setting, before it touches anything, so rows of two configurations never mix. Settings that only change speed
(batch sizes, actors, device, Ray address) and the input (a nightly job labels a new prefix into the same OUTPUT)
are free. The package version is recorded per run (`_runs/<run>.json`); a new version alone is a warning.

Fingerprints: `sha256:` of the bytes of a local file (a folder: its config and weight files), the store's own
`etag:` / `md5:` / `generation:` for object storage (no download), `hub:<commit>` for a Hugging Face hub id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from vitpose_batch.files.storage import open_filesystem
from vitpose_batch.files.uris import canonical_uri
from vitpose_batch.output.layout import Output
from vitpose_core.hub import HUB_ID, local_path

log = logging.getLogger("vitpose_batch")

# How images and heatmaps were decoded: the crop geometry, DARK and its blur (PoseEstimator's defaults), and how far
# large JPEGs were reduced; part of every OUTPUT's provenance (recorded as its "decode" setting).
DECODING = {"crop": "udp", "padding": 1.25, "refine": "dark", "blur": "original", "blur_border": "reflect101",
            "jpeg_reduction": "crop- and detector-bound (longer side >= 960 px), photos of 4 MP and more"}
RECORD_FORMAT = 2
# files of a model / detector folder whose bytes decide what it computes
FINGERPRINTED = (".json", ".safetensors", ".bin", ".pth", ".pt", ".onnx", ".txt", ".model")


class SettingsChanged(ValueError):
    """This run's settings differ from those OUTPUT was made with."""


class RecordError(ValueError):
    """`_job.json` is unreadable."""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vitpose-batch")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Provenance:
    """Every setting that changes what a row says. Compared field by field with an OUTPUT's record."""

    model: str
    model_fingerprint: str
    detector: str | None
    detector_fingerprint: str | None
    boxes: str | None
    boxes_fingerprint: str | None
    flip_test: bool
    dataset_index: int | None
    dtype: str
    decode: dict[str, Any] = field(default_factory=dict)
    keypoint_set: str | None = None
    video: dict[str, Any] | None = None  # videos' sampling (vitpose_batch.pipeline.video_segments.Sampling)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# what a user changes to change a setting, for the refusal message
FLAGS = {"model": "--model", "model_fingerprint": "--model", "detector": "--detector",
         "detector_fingerprint": "--detector", "boxes": "--boxes", "boxes_fingerprint": "--boxes",
         "flip_test": "--flip-test", "dataset_index": "--dataset-index", "dtype": "--dtype",
         "decode": "heatmap decoding", "keypoint_set": "--model",
         "video": "video sampling (--frame-rate / --every-nth-frame / --detect-every / --segment-seconds)"}
VIDEO_FLAGS = {"frame_rate": "--frame-rate", "every_nth_frame": "--every-nth-frame", "detect_every": "--detect-every",
               "segment_s": "--segment-seconds"}


def _sha256_files(paths: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name, opener in paths:
        digest.update(name.encode() + b"\0")
        with opener() as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _store_tag(info: dict) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return f"{key.lower()}:{str(info[key]).strip(chr(34))}"
    return f"size:{info.get('size')}"


def canonical_ref(ref: str | None) -> str | None:
    """A model / detector / boxes ref as recorded: local paths absolute and resolved, URIs canonical, hub ids as
    given (so the same file named two ways is one setting)."""
    if ref is None:
        return None
    if local_path(ref).exists():
        return os.path.realpath(local_path(ref))
    return canonical_uri(ref) if "://" in ref else ref


def fingerprint(ref: str | None) -> str | None:
    """A fingerprint of the bytes behind `ref` (see the module docstring); None for None."""
    if ref is None:
        return None
    local = local_path(ref)
    if local.exists():
        if local.is_file():
            return _sha256_files([(local.name, lambda: open(local, "rb"))])
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in FINGERPRINTED)
        return _sha256_files([(str(p.relative_to(local)), lambda p=p: open(p, "rb")) for p in files])
    if "://" in ref:
        fs, path = open_filesystem(ref)
        if fs.isfile(path):
            return _store_tag(fs.info(path))
        tags = sorted((posixpath.relpath(p, path), _store_tag(info)) for p, info in fs.find(path, detail=True).items()
                      if p.endswith(FINGERPRINTED))
        return "store:" + hashlib.sha256(json.dumps(tags).encode()).hexdigest()
    if HUB_ID.match(ref):
        try:
            from huggingface_hub import model_info

            return f"hub:{model_info(ref, timeout=10).sha}"
        except Exception:  # noqa: BLE001 - offline with a cached snapshot: its commit is in the cache path
            from huggingface_hub import snapshot_download

            return "hub:" + posixpath.basename(snapshot_download(ref, allow_patterns=["config.json"],
                                                                   local_files_only=True))
    return None


def read_run_records(output: Output) -> list[tuple[str, dict | None]]:
    """(path, record) of every `_runs/*.json` under OUTPUT; record None where the file is unreadable."""
    try:
        paths = [p for p in output.fs.ls(output.runs_folder, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return []
    found = []
    for path in paths:
        try:
            record = json.loads(output.fs.cat_file(path))
        except (ValueError, OSError):
            record = None
        found.append((path, record if isinstance(record, dict) else None))
    return found


def load_record(output: Output) -> dict | None:
    """OUTPUT's `_job.json`, or None when OUTPUT has none; RecordError naming the file when it is unreadable."""
    fs, path = output.fs, output.job_record
    try:
        data = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"job record {fs.unstrip_protocol(path)} is corrupt ({exc}); it says what made the rows "
                          "of this OUTPUT, so it is not replaced: restore it or use another OUTPUT") from None


def _show(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:24] + ("…" if len(value) > 24 else "")
    return json.dumps(value) if not isinstance(value, str) else value


def check_settings(output: Output, record: dict, wanted: Provenance) -> None:
    """Raise SettingsChanged naming the first setting in which `wanted` differs from OUTPUT's `record`."""
    recorded = record.get("settings")
    if recorded is None:  # a record written before fingerprints existed: compare the settings it has
        recorded = {k: record.get(k) for k in ("model", "detector", "boxes", "flip_test", "dataset_index")}
    for key, value in wanted.as_dict().items():
        if key not in recorded or recorded[key] == value:
            continue
        if key == "video" and isinstance(value, dict) and isinstance(recorded[key], dict):
            # name the one sampling flag that differs, not two whole dicts
            sub = next(k for k in value if recorded[key].get(k) != value[k])
            raise SettingsChanged(
                f"output {output} was made with {VIDEO_FLAGS.get(sub, sub)} {_show(sub, recorded[key].get(sub))} "
                f"and this run asks for {_show(sub, value[sub])}; rows of two configurations never mix: use another "
                "OUTPUT, or the settings it was made with")
        flag = FLAGS.get(key, key)
        what = "its weights changed" if key.endswith("fingerprint") else ""
        raise SettingsChanged(
            f"output {output} was made with {flag} {_show(key, recorded[key])} and this run asks for "
            f"{_show(key, value)}{' (' + what + ')' if what else ''}; rows of two configurations never mix: "
            "use another OUTPUT, or the settings it was made with")


def create_record(output: Output, wanted: Provenance) -> dict:
    """Write OUTPUT's `_job.json` (the caller holds the lease and has found none)."""
    record = {"format": RECORD_FORMAT, "settings": wanted.as_dict(), "created_by": package_version()}
    # legacy readers (evaluate) look for these at the top level
    record.update(model=wanted.model, detector=wanted.detector, boxes=wanted.boxes, flip_test=wanted.flip_test,
                  dataset_index=wanted.dataset_index)
    output.fs.pipe_file(output.job_record, json.dumps(record, indent=2).encode())
    return record


def upgrade_record(output: Output, record: dict, wanted: Provenance) -> dict:
    """A record from before fingerprints, whose settings agree: add the fingerprints (same settings, more detail)."""
    if record.get("settings") is not None:
        return record
    upgraded = {**record, "format": RECORD_FORMAT, "settings": wanted.as_dict(),
                "created_by": record.get("created_by", "unknown")}
    output.fs.pipe_file(output.job_record, json.dumps(upgraded, indent=2).encode())
    return upgraded


def settle_record(output: Output, wanted: Provenance) -> dict:
    """Under the lease, before the first commit: OUTPUT's `_job.json` created with `wanted`, or checked against it
    (SettingsChanged) and given fingerprints if it predates them. Returns the record."""
    record = load_record(output)
    if record is None:
        return create_record(output, wanted)
    check_settings(output, record, wanted)
    return upgrade_record(output, record, wanted)
