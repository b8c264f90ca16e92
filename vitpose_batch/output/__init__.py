"""The OUTPUT protocol: one true row per image, whatever runs, races, changes or crashes.

* `layout`     what OUTPUT holds and where (`Output`: OUTPUT opened once per command, its file system and paths)
* `uris`       one spelling per image (canonical URIs)
* `lease`      one writer per OUTPUT (flock on local disks, conditional writes on S3 / GCS)
* `provenance` what made the rows, fixed at creation; a run with other settings is refused
* `parts`      right-sized live Parquet parts, durable staged progress, crash recovery
* `resume`     which listed images OUTPUT holds (128-bit keys, streamed anti-join), which errors to redo

Annotate, sources, export, evaluate and render read and write OUTPUT only through these modules.
"""

from vitpose_batch.output.layout import PART_PREFIX, PART_SUFFIX, Output
from vitpose_batch.output.lease import LeaseHeld, LeaseLost, make_lease
from vitpose_batch.output.parts import (
    PartFileError,
    PartWriter,
    iter_part_tables,
    list_part_files,
    recover_staging,
)
from vitpose_batch.output.provenance import Provenance, RecordError, SettingsChanged, load_record
from vitpose_batch.files.uris import canonical_prefix, canonical_uri

__all__ = [
    "PART_PREFIX", "PART_SUFFIX", "LeaseHeld", "LeaseLost", "Output", "PartFileError", "PartWriter", "Provenance",
    "RecordError", "SettingsChanged", "canonical_prefix", "canonical_uri", "iter_part_tables", "list_part_files",
    "load_record", "make_lease", "recover_staging",
]
