"""vitpose-batch: ViTPose keypoints for millions of images on Ray Data, under the OUTPUT protocol.

    vitpose-batch annotate INPUT OUTPUT ...        # the command (python -m vitpose_batch works too)

Packages, by what they do (data flows source -> decode -> detect -> crop -> model -> heatmaps -> rows -> sinks):

* `vitpose_core` (its own package): the model, checkpoints, detectors, crops, heatmap decoding; no Ray;
* `vitpose_batch.pipeline`: the annotate pipeline on Ray Data: listing, image decoding, the pose actors, the job;
* `vitpose_batch.output`: the OUTPUT protocol: lease, provenance, parts, resume;
* `vitpose_batch.review`: the commands that read an OUTPUT: export, evaluate, render, report;
* `vitpose_batch.files`: files, URIs and image addresses;
* `vitpose_batch.schemas`: the prediction rows and their COCO forms.

Importing this package imports nothing heavy: `vitpose-batch --help` stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The Python API, imported on first use (Ray, torch and pyarrow load only then).
_API = {
    "estimate_poses": "vitpose_batch.pipeline.pose_stage",
    "StageError": "vitpose_batch.pipeline.pose_stage",
    "write_output": "vitpose_batch.output.datasets",
    "read_output": "vitpose_batch.output.datasets",
    "OutputRowsError": "vitpose_batch.output.datasets",
    "WriteSummary": "vitpose_batch.output.datasets",
    "to_sv_keypoints": "vitpose_batch.review.supervision_keypoints",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vitpose_batch' has no attribute {name!r}")
