"""Image addresses: the one parser of the `image_uri`s rows carry (vitpose_batch.files.image_reader reads them).

* `shard.tar#member` (also .tar.gz, .tgz): a WebDataset member the listing found in that shard;
* `shard.parquet#i` (also .pq, .parq): row i of a Parquet shard;
* `video.mp4#frame=N` (also .mov, .mkv, .avi, .webm): frame N of a video, in presentation order from 0 (the one
  spelling: `frame_uri`);
* anything else: a plain file (a '#' elsewhere is part of its name).

Pure string functions: no I/O. A plain file whose own name holds `.tar#` reads here as a member; annotate's listing
knows better and matches boxes by the file's own name (`schemas.box_files.BoxIndex.name_for`), and the reader tries
a local file of exactly that name first.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

# `shard#member` only when the part before '#' is a shard: a '#' elsewhere is part of an ordinary file name.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
FRAME_MARK = "#frame="


def is_video(uri: str) -> bool:
    """True when `uri` names a video file: it ends with one of VIDEO_SUFFIXES (any case)."""
    return uri.lower().endswith(VIDEO_SUFFIXES)


def frame_uri(video_uri: str, frame_index: int) -> str:
    """The address of frame `frame_index` (0-based, presentation order) of a video: `video_uri#frame=N`."""
    return f"{video_uri}{FRAME_MARK}{int(frame_index)}"


def split_frame_uri(uri: str) -> tuple[str, int] | None:
    """`(video_uri, frame_index)` for a frame address (`frame_uri`), else None."""
    base, member, kind = split_image_uri(uri)
    return (base, int(member)) if kind == "frame" else None


def split_image_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`(shard_or_file_uri, member, kind)`: kind "tar" (member = name inside the tar), "parquet" (member = row
    index as text), "frame" (member = the frame index as text; see `frame_uri`) or None for a plain image file
    (member None)."""
    pos = uri.rfind(FRAME_MARK)
    if pos > 0 and uri[:pos].lower().endswith(VIDEO_SUFFIXES) and uri[pos + len(FRAME_MARK):].isdigit():
        return uri[:pos], uri[pos + len(FRAME_MARK):], "frame"
    start = 0
    while (pos := uri.find("#", start)) >= 0:
        base, member = uri[:pos], uri[pos + 1:]
        lowered = base.lower()
        if lowered.endswith(TAR_SUFFIXES):
            return base, member, "tar"
        if lowered.endswith(PARQUET_SUFFIXES):
            return base, member, "parquet"
        start = pos + 1
    return uri, None, None


def image_name(uri: str) -> str:
    """A file name for the image behind `uri`: the basename of a plain file or of a tar member, and
    `<shard stem>-<row>` for a Parquet row and `<video stem>-frame<N>` for a video frame (which have no name of their
    own)."""
    base, member, kind = split_image_uri(uri)
    if kind == "frame":
        return f"{posixpath.splitext(posixpath.basename(base.rstrip('/')))[0]}-frame{member}"
    if kind == "parquet":
        stem = posixpath.basename(base.rstrip("/"))
        for suffix in PARQUET_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return f"{stem}-{member}"
    return posixpath.basename((member if kind == "tar" else base).replace("\\", "/").rstrip("/"))


def integer_stem(name: str) -> int | None:
    """785 for `.../000000000785.jpg`; None for other names and for bare numbers without an extension (those are
    row indices, such as the `#12` of a Parquet row, not file names)."""
    stem, ext = posixpath.splitext(posixpath.basename(name.replace("\\", "/")))
    return int(stem) if ext and stem.isascii() and stem.isdigit() else None


def image_id_from_uri(uri: str) -> int | None:
    """COCO's naming convention read back from a URI: `.../000000000785.jpg` -> 785 (for a tar member, its member
    name); None when the name is not an integer, and always None for Parquet rows (their `#n` is a row index)."""
    _, member, kind = split_image_uri(uri)
    if kind in ("parquet", "frame"):
        return None
    return integer_stem(member if kind == "tar" else uri)


def image_id_of(row: Mapping[str, Any]) -> int | None:
    """The row's `image_id`, else the integer stem of its image's basename (see `image_id_from_uri`), else None."""
    value = row.get("image_id")
    if value is not None:
        return int(value)
    uri = row.get("image_uri")
    return image_id_from_uri(uri) if uri else None
