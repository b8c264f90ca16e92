"""Checks a job makes before it starts Ray: the model, detector and OUTPUT can be used (one-line errors if not)."""

from __future__ import annotations

import fsspec

from vitpose_core.checkpoints import CheckpointError
from vitpose_core.detectors import DetectorError
from vitpose_core.hub import HUB_ID, hub_snapshot, local_path, one_line


def exists(ref: str) -> bool:
    if local_path(ref).exists():
        return True
    if "://" in ref:
        try:
            fs, path = fsspec.core.url_to_fs(ref)
            return fs.exists(path)
        except Exception:  # noqa: BLE001 - unreachable storage is reported as not found, with the ref
            return False
    return False


def check_model_ref(ref: str) -> None:
    """The ref names something loadable: a local/remote file or folder, or a hub repo we can reach."""
    if exists(ref):
        return
    if "://" not in ref and HUB_ID.match(ref):
        hub_snapshot(ref, ["config.json"], CheckpointError, "model",
                     "--model with a local folder, an original .pth, or an s3:// / gs:// folder")
        return
    raise CheckpointError(f"model {ref!r} not found")


def check_detector_ref(ref: str) -> None:
    if exists(ref):
        return
    if "://" not in ref and HUB_ID.match(ref) and not ref.endswith(".onnx"):
        hub_snapshot(ref, ["config.json"], DetectorError, "detector",
                     "--detector with a local .onnx file or transformers folder, or --boxes FILE")
        return
    raise DetectorError(f"detector {ref!r} not found")
