"""Every check a run can make before it starts work: one line naming the input and the problem, in seconds, with
OUTPUT untouched (the lease, the job record and Ray come after).

INPUT is listed far enough to know what it is; the model checkpoint is opened and its architecture read (so a
truncated `.pth` or a `.jpg` given as `--model` is refused here, not inside an actor); the detector is loaded once
on the CPU; a boxes file is read and checked whole; `--dataset-index` is checked against the model's experts and
heads; `--device cuda` against the GPUs of the machine or cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec

from vitpose_batch.files.addresses import is_video
from vitpose_batch.pipeline.sources import InputError, Listing, list_input
from vitpose_batch.schemas.box_files import load_boxes
from vitpose_core.checkpoints import CheckpointError, read_checkpoint
from vitpose_core.detectors import DetectorError, load_detector
from vitpose_core.devices import DeviceError
from vitpose_core.estimator import head_keypoint_set
from vitpose_core.hub import HUB_ID, hub_snapshot, local_path
from vitpose_core.keypoint_sets import KeypointSet


@dataclass
class Checked:
    """What the checks found, for the run to use."""

    listing: Listing
    keypoint_set: KeypointSet
    box_index: Any = None  # vitpose_batch.schemas.box_files.BoxIndex with --boxes


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


def is_hub_id(ref: str) -> bool:
    return "://" not in ref and bool(HUB_ID.match(ref)) and not exists(ref)


def check_model(ref: str, dataset_index: int | None) -> KeypointSet:
    """Open the checkpoint, read its architecture; the keypoint set the answering head predicts."""

    if not exists(ref) and not is_hub_id(ref):
        raise CheckpointError(f"model {ref!r} not found")
    config, _ = read_checkpoint(ref)
    if dataset_index is not None:
        datasets = max(config.num_experts, len(config.num_heads_out))
        if datasets <= 1:
            raise ValueError(f"--dataset-index {dataset_index}: model {ref} is not a ViTPose++ checkpoint (no "
                             "experts, one head); drop --dataset-index")
        if dataset_index >= datasets:
            raise ValueError(f"--dataset-index {dataset_index}: model {ref} has {datasets} datasets "
                             f"(0..{datasets - 1})")
    return head_keypoint_set(config, dataset_index)


def check_detector(ref: str) -> None:
    """Load the detector once on the CPU (a hub id: its config only, the weights come with the actors)."""
    if is_hub_id(ref) and not ref.endswith(".onnx"):
        hub_snapshot(ref, ["config.json"], DetectorError, "detector",
                     "--detector with a local .onnx file or transformers folder, or --boxes FILE")
        return
    if not exists(ref):
        raise DetectorError(f"detector {ref!r} not found")

    load_detector(ref, device="cpu")


def check_device(device: str, ray_address: str | None) -> None:
    """`--device cuda` needs a GPU: here when Ray runs in this process, in the cluster when it joins one."""
    if device != "cuda":
        return
    if ray_address is None:
        from vitpose_core.devices import check_device as check_local

        check_local("cuda")
        return
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if not gpus:
        raise DeviceError(f"--device cuda: the Ray cluster at {ray_address} has no GPUs; its pose actors would "
                          "never be scheduled (use --device cpu, or add GPU nodes)")


def check_run(opts) -> Checked:
    """All of the above for an AnnotateOptions; raises a ValueError subclass with a one-line message."""
    listing = list_input(opts.input, image_root=opts.image_root, image_column=opts.image_column)
    keypoint_set = check_model(opts.model, opts.dataset_index)
    box_index = None
    if opts.boxes:
        if is_video(opts.input):  # a folder's videos are known only once it is walked: those are left out then
            raise InputError(f"input {opts.input!r} is a video: its frames need a --detector (--boxes names the "
                             "persons of images)")
        box_index = load_boxes(opts.boxes, images=listing.coco_images)
    elif opts.detector:
        check_detector(opts.detector)
    else:
        raise ValueError("no person boxes: pass --detector REF or --boxes FILE")
    return Checked(listing, keypoint_set, box_index)
