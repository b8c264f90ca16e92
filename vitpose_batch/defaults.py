"""Defaults the command line shows and the jobs use (no heavy imports: `vitpose-batch --help` stays instant)."""

DEFAULT_MODEL = "usyd-community/vitpose-base-simple"  # Hugging Face hub id, as on the seed page
DEFAULT_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"  # the seed page's RT-DETR person detector
DEFAULT_ROWS_PER_FILE = 50_000
DEFAULT_BYTES_PER_FILE = 128 << 20
DEFAULT_COMMIT_INTERVAL_S = 30.0
DEFAULT_BATCH_SIZE = 16
KEYPOINT_THRESHOLD = 0.3  # keypoints drawn, reviewed and labelled above this score (ViTPose's drawing threshold)
OKS_THRESHOLD = 0.9  # ViTPose's OKS-NMS: a pose this similar to a better-scored one is the same person
