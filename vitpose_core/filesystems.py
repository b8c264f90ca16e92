"""A path or URI -> the fsspec file system and path it names, a local path always taken literally.

fsspec reads syntax into a URL: `a::b` chains two file systems, and its globbing gives `[`, `*` and `?` meaning.
Local file and folder names may hold any of these, so a local path never goes through that parser:

* a string without `://`, or one that exists on the local disk as it is written, is a local path, exactly;
* `file://PATH` is the local path PATH, exactly (no percent-decoding, as fsspec's own `file://` does not decode);
* anything else (`s3://`, `gs://`, `memory://`, chained `simplecache::s3://...`) is an fsspec URL.

Whether a string is a glob is its caller's decision (vitpose_batch.pipeline.sources: a glob only when no such path exists).
"""

from __future__ import annotations

import os
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_LOCAL = LocalFileSystem()


def local_path_of(uri: str) -> str | None:
    """The local path `uri` names, exactly as written (`file://` dropped), or None when it is an fsspec URL."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" not in uri or os.path.lexists(uri):
        return uri
    return None


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path) for a local path (absolute, literal) or any fsspec URL (credentials from the
    environment). Raises what fsspec raises for an unknown protocol or a missing backend (ValueError, ImportError)."""
    local = local_path_of(uri)
    if local is not None:
        return _LOCAL, os.path.abspath(local) if local else local
    return fsspec.core.url_to_fs(uri)


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> IO:
    """Open the file `uri` names (see `filesystem`): a local path with Python's own open, a URL with fsspec."""
    local = local_path_of(uri)
    if local is not None:
        return open(local, mode, **kwargs)  # noqa: SIM115 - the caller's context manager closes it
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.open(path, mode, **kwargs)
