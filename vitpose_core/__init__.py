"""vitpose_core: ViTPose top-down pose estimation in one process (no Ray).

    model = load_pose_model(ref)                       # HF folder, fsspec URI, original .pth, hub id
    keypoints, scores = decode_heatmaps(heatmaps, boxes)
    estimator = PoseEstimator(model, detector=load_detector("yolox_nano.onnx"))
    results = estimator(images)                        # per image: boxes, keypoints, scores
"""

from .checkpoints import CheckpointError, load_pose_model
from .heatmap_decoding import decode_heatmaps
from .detectors import DetectorError, load_detector
from .devices import DeviceError
from .drawing import draw_poses, draw_poses_from_result
from .estimator import PoseEstimator
from .keypoint_sets import KeypointSet, get_keypoint_set
from .model import ViTPose, ViTPoseConfig

__all__ = [
    "CheckpointError",
    "DetectorError",
    "DeviceError",
    "KeypointSet",
    "PoseEstimator",
    "ViTPose",
    "ViTPoseConfig",
    "decode_heatmaps",
    "draw_poses",
    "draw_poses_from_result",
    "get_keypoint_set",
    "load_detector",
    "load_pose_model",
]
