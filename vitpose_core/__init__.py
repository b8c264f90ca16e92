"""vitpose_core: ViTPose top-down pose estimation in one process (no Ray).

Public API (see README): `load_pose_model`, `ViTPose`, `ViTPoseConfig`, keypoint metadata in `keypoint_sets`.
"""

from .checkpoints import CheckpointError, load_pose_model
from .model import ViTPose, ViTPoseConfig

__all__ = ["CheckpointError", "ViTPose", "ViTPoseConfig", "load_pose_model"]
