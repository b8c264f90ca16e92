"""Where outputs live: fsspec filesystems, committed part files, atomic writes, and what a previous run finished.

An annotate OUTPUT holds `part-<run>-<task>.parquet` files. Each is written whole or not at all: to a `.tmp` name,
then renamed (local disks), or with one PUT (object stores, where an interrupted upload leaves no object). A re-run
reads the `image_uri` column of the committed parts and skips those images, so nothing is done or written twice.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterator, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


def read_json(uri: str, what: str, error: type[ValueError] = ValueError):
    """The JSON document at `uri` (local or fsspec URL); `error("<what> '<uri>' ...")` in one line if it cannot be."""
    try:
        with fsspec.open(uri, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error(f"{what} {uri!r} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {uri!r}: not valid JSON ({exc})") from None


def open_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and path for a local path or any fsspec URL (credentials from the environment)."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path.rstrip("/") if path not in ("/", "") else path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def list_part_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Committed part files under `folder`, sorted; [] when the folder does not exist."""
    fs.invalidate_cache(folder)  # object-store filesystems cache listings; parts may have landed since
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return sorted(
        n for n in names
        if posixpath.basename(n).startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)
    )


def write_table_atomic(fs: fsspec.AbstractFileSystem, table: pa.Table, path: str) -> None:
    """Write one Parquet file so that readers see all of it or none of it."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as handle:
            pq.write_table(table, handle)
        fs.mv(tmp, path)
    else:
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        fs.pipe_file(path, buffer.getvalue().to_pybytes())


def iter_prediction_tables(uri: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Stream the prediction tables under `uri` (an annotate OUTPUT, or one .parquet file), one file at a time."""
    fs, path = open_filesystem(uri)
    files = [path] if path.endswith(PART_SUFFIX) and fs.isfile(path) else list_part_files(fs, path)
    for file in files:
        with fs.open(file, "rb") as handle:
            yield pq.read_table(handle, columns=list(columns) if columns else None)


def finished_uris(uri: str) -> set[str]:
    """image_uri of every row a previous run committed under OUTPUT `uri`."""
    done: set[str] = set()
    for table in iter_prediction_tables(uri, columns=["image_uri"]):
        done.update(table.column("image_uri").to_pylist())
    return done


def remove_stale_temporaries(uri: str) -> int:
    """Delete `.tmp` files a killed local run left behind; returns how many."""
    fs, path = open_filesystem(uri)
    try:
        stale = [n for n in fs.ls(path, detail=False) if n.endswith(".tmp")]
    except FileNotFoundError:
        return 0
    for name in stale:
        fs.rm(name)
    return len(stale)
