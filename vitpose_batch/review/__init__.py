"""Commands that read an OUTPUT: export (COCO, Label Studio), evaluate (COCO keypoint AP), render, report."""
