"""Image shards as datasets store them, and the one reader of an image address (file, tar member, Parquet row).

Parquet image columns (`--image-column`):
* binary / large_binary: the encoded image bytes;
* struct with a `bytes` field (binary) and usually a `path` field (string): what Hugging Face `datasets` writes for
  its `Image` feature. Where `bytes` is null, `path` names the file, resolved as a COCO JSON's `file_name` is:
  against `--image-root` (default: the shard's folder); an absolute path or a URL is taken as it is.
Any other column type, or a column the shard lacks, is refused before any work, naming the shard, the column and
the columns the shard has.

Addresses are parsed by `vitpose_batch.files.addresses` (the one parser): `shard.tar#member` is a WebDataset
member, `shard.parquet#i` row i of a Parquet shard, `video.mp4#frame=N` frame N of a video, anything else a plain
file. annotate reads shards through `parquet_rows`; render and report read any address back as pixels through
`read_image` (encoded images: `read_image_bytes` with the image column and root the runs recorded, `ImageSource`,
then annotate's `decode_image`; video frames: `read_video_frame`, one frame decoded as annotate decoded it).
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vitpose_batch.files.addresses import split_image_uri
from vitpose_batch.files.uris import canonical_uri
from vitpose_batch.output.layout import Output
from vitpose_batch.output.provenance import read_run_records
from vitpose_batch.pipeline.image_decoding import ENCODED_SCHEMA, ImageError, decode_image, read_bytes
from vitpose_batch.video.decoding import VideoError, decode_frames, scan
from vitpose_core.filesystems import filesystem, local_path_of, open_uri


class ShardError(ValueError):
    """A shard whose image column cannot be read; the message is one line naming the shard and the column."""


def column_kind(field_type: pa.DataType) -> str | None:
    """"bytes" for a binary column, "struct" for a struct with a binary `bytes` field, None for anything else."""
    if pa.types.is_binary(field_type) or pa.types.is_large_binary(field_type):
        return "bytes"
    if pa.types.is_struct(field_type):
        index = field_type.get_field_index("bytes")
        if index >= 0 and (pa.types.is_binary(field_type.field(index).type)
                           or pa.types.is_large_binary(field_type.field(index).type)):
            return "struct"
    return None


def check_image_column(shard: str, schema: pa.Schema, column: str) -> None:
    """Raise ShardError unless `schema` has `column` as an image column (see the module docstring)."""
    described = ", ".join(f"{f.name} ({f.type})" for f in schema)
    if column not in schema.names:
        raise ShardError(f"parquet shard {shard}: no column {column!r}; its columns: {described}")
    kind = column_kind(schema.field(column).type)
    if kind is None:
        raise ShardError(f"parquet shard {shard}: column {column!r} is {schema.field(column).type}, not image bytes "
                         f"(binary, or a struct with a binary 'bytes' field); its columns: {described}")


def shard_schema(shard: str) -> pa.Schema:
    """The Arrow schema of a Parquet shard, from its footer."""
    fs, path = filesystem(shard)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).schema_arrow


def check_shards(shards: list[str], column: str, threads: int = 16) -> None:
    """Every shard's footer read (in parallel) and its `column` checked; the first bad shard raises ShardError."""
    def check(shard: str) -> None:
        try:
            schema = shard_schema(shard)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ShardError(f"parquet shard {shard}: cannot be read as Parquet ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        check_image_column(shard, schema, column)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards)))) as pool:
        list(pool.map(check, shards))


def resolve_path(path: str, shard: str, image_root: str | None) -> str:
    """A struct's `path`, resolved as a COCO file_name: absolute or a URL as it is, else against `image_root`
    (default: the shard's folder)."""
    if "://" in path or posixpath.isabs(path):
        return path
    root = image_root if image_root is not None else posixpath.dirname(shard.rstrip("/"))
    return posixpath.join(root, path)


def column_bytes(values: pa.Array, shard: str, image_root: str | None) -> tuple[list, list, list]:
    """(datas, errors, retryable) for one image column's values: bytes as stored, a struct's bytes, or the file its
    path names (read here); a row with neither becomes an error."""
    kind = column_kind(values.type)
    if kind == "bytes":
        datas = values.to_pylist()
    else:
        datas = values.field("bytes").to_pylist()
    errors: list[str | None] = [None] * len(datas)
    retryable: list[bool | None] = [None] * len(datas)
    paths = values.field("path").to_pylist() if kind == "struct" and values.type.get_field_index("path") >= 0 \
        else [None] * len(datas)
    valid = values.is_valid().to_pylist()
    for i, (data, path) in enumerate(zip(datas, paths)):
        if data is not None:
            continue
        if not valid[i] or not path:
            errors[i], retryable[i] = "no image in this row (null bytes and no path)", False
            continue
        resolved = resolve_path(path, shard, image_root)
        try:
            datas[i] = read_bytes(resolved)
        except ImageError as exc:
            errors[i], retryable[i] = f"{exc} ({resolved})", exc.retryable
    return datas, errors, retryable


def parquet_rows(shard: str, column: str, image_root: str | None = None) -> pa.Table:
    """Every row of a Parquet shard as ENCODED rows, row i as `shard#i`."""
    fs, path = filesystem(shard)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        check_image_column(shard, parquet.schema_arrow, column)
        values = parquet.read(columns=[column]).column(column).combine_chunks()
    datas, errors, retryable = column_bytes(values, shard, image_root)
    uris = [f"{shard}#{i}" for i in range(len(datas))]
    return pa.table({"image_uri": uris, "image_id": pa.nulls(len(uris), pa.int64()), "data": datas,
                     "error": errors, "error_retryable": retryable}, schema=ENCODED_SCHEMA)


@dataclass
class ImageSource:
    """How an OUTPUT's runs read their Parquet shards: the image columns and image roots they recorded, in run
    order. Rows of OUTPUTs made before runs recorded them fall back to the shard's only binary column."""

    columns: list[str] = field(default_factory=list)
    image_root: str | None = None


def image_source_of(output: Output) -> ImageSource:
    """The image columns and root recorded in OUTPUT's run records (`_runs/*.json`)."""
    try:
        records = [r for _, r in read_run_records(output) if r]
    except (OSError, ValueError):
        return ImageSource()
    records.sort(key=lambda r: r.get("started") or 0)
    columns = list(dict.fromkeys(r["image_column"] for r in records if r.get("image_column")))
    roots = [r["image_root"] for r in records if r.get("image_root")]
    return ImageSource(columns, roots[-1] if roots else None)


def _parquet_row_bytes(shard: str, row: int, source: ImageSource) -> bytes:
    fs, path = filesystem(shard)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        column = next((c for c in source.columns if c in schema.names and column_kind(schema.field(c).type)), None)
        if column is None:
            binary = [f.name for f in schema if column_kind(f.type) == "bytes"]
            if len(binary) != 1:
                recorded = f"none of the runs' image columns ({', '.join(source.columns)}) is in it" \
                    if source.columns else "no run recorded its image column"
                found = f"{len(binary)} ({', '.join(binary)})" if binary else "none"
                raise ShardError(f"parquet shard {shard}: {recorded}, so it must have exactly one binary (image "
                                 f"bytes) column; found {found}")
            column = binary[0]
        start = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if start <= row < start + rows:
                values = parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()
                datas, errors, _ = column_bytes(values.slice(row - start, 1), shard, source.image_root)
                if errors[0]:
                    raise ShardError(f"{shard}#{row}: {errors[0]}")
                return datas[0]
            start += rows
    raise FileNotFoundError(f"{shard} has {start} rows, no row {row}")


def _tar_member_bytes(shard: str, member: str) -> bytes:
    with open_uri(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise FileNotFoundError(f"{shard} has no member {member!r}") from None
        extracted = tar.extractfile(info)
        if extracted is None:
            raise ValueError(f"{shard}: member {member!r} is not a regular file")
        return extracted.read()


def _exact_local_file(image_uri: str) -> bool:
    """True when `image_uri` holds a '#' and a local file of exactly that name exists (it wins over any '#' reading)."""
    local = local_path_of(image_uri)
    return "#" in image_uri and local is not None and os.path.isfile(local)


def read_video_frame(video_uri: str, frame_index: int) -> np.ndarray:
    """Frame `frame_index` (0-based, presentation order, as rows' `frame_index`) of the video at `video_uri` (local
    path or fsspec URL), as annotate saw it: HxWx3 uint8 RGB, upright (the container's rotation applied).

    The video's packets are indexed first (`vitpose_batch.video.decoding.scan`: all the file is read once, nothing
    decoded but the first frame), then decoding starts at the keyframe before the frame and stops at it. For many
    frames of one video, decode them in one pass with `decode_frames` instead.

    Raises VideoError (a ValueError), one line naming the video: the file cannot be opened or read (missing, not a
    video, no decoder), it has no frame `frame_index`, or decoding stops before it."""
    if frame_index < 0:
        raise VideoError(f"video {video_uri}: no frame {frame_index} (frames are numbered from 0)")
    try:
        with open_uri(video_uri) as file:
            index = scan(file, video_uri)
            if frame_index >= index.frame_count:
                raise VideoError(f"video {video_uri}: no frame {frame_index}, it has {index.frame_count} frames")
            frames = decode_frames(file, video_uri, index, np.array([frame_index]), frame_index, frame_index + 1)
            try:
                for _, _, rgb in frames:
                    return rgb
            finally:
                frames.close()
    except OSError as exc:
        raise VideoError(f"video {video_uri}: cannot be read: {type(exc).__name__}: {exc}") from exc
    raise VideoError(f"video {video_uri}: frame {frame_index} did not come out of the decoder")


def read_image(image_uri: str, source: ImageSource | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB of the image behind any `image_uri` rows carry, exactly as annotate saw it: the frame and the
    pixels the predictions were made on.

    Encoded images (plain files, tar members, Parquet rows: `read_image_bytes` through `source`) are decoded as
    annotate decodes them (`vitpose_batch.pipeline.image_decoding.decode_image`: EXIF orientation, transparency
    composited on white, 16-bit grey scaled, at full size); a video frame `video#frame=N` is decoded from the video
    (`read_video_frame`). Raises what those raise: ImageError, VideoError (one line naming the video), ShardError,
    FileNotFoundError, OSError."""
    if not _exact_local_file(image_uri):
        base, member, kind = split_image_uri(image_uri)
        if kind == "frame":
            return read_video_frame(base, int(member))
    return decode_image(read_image_bytes(image_uri, source))


def read_image_bytes(image_uri: str, source: ImageSource | None = None) -> bytes:
    """The encoded bytes of the image behind `image_uri`: a plain file (a local file of exactly that name wins over
    any '#' reading), a tar member, or a Parquet row read through `source`'s image column. A video frame has no
    encoded bytes of its own: ValueError (read its pixels with `read_image`)."""
    if _exact_local_file(image_uri):
        return read_bytes(canonical_uri(image_uri))
    base, member, kind = split_image_uri(image_uri)
    if kind == "frame":
        raise ValueError(f"{image_uri} is a video frame, which has no encoded bytes of its own; read its pixels "
                         "with read_image")
    if kind == "tar":
        return _tar_member_bytes(base, member)
    if kind == "parquet":
        try:
            row = int(member)
        except ValueError:
            raise ValueError(f"{image_uri}: the part after '#' must be a row index") from None
        return _parquet_row_bytes(base, row, source or ImageSource())
    return read_bytes(base)  # annotate's reader, with its retries
