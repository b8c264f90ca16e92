"""fsspec helpers: one filesystem per URI (credentials from the environment), JSON documents with one-line errors.

How an annotate OUTPUT is laid out, committed and resumed is `vitpose_batch.output`'s job; a command opens its
OUTPUT once, as a `vitpose_batch.output.layout.Output`, and hands that down.
"""

from __future__ import annotations

import json

import fsspec

from vitpose_core.filesystems import filesystem, open_uri


def read_json(uri: str, what: str, error: type[ValueError] = ValueError):
    """The JSON document at `uri` (local or fsspec URL); `error("<what> '<uri>' ...")` in one line if it cannot be."""
    try:
        with open_uri(uri, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error(f"{what} {uri!r} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {uri!r}: not valid JSON ({exc})") from None


def open_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and path for a local path (taken literally, see vitpose_core.filesystems) or any fsspec URL
    (credentials from the environment); the path without a trailing slash."""
    fs, path = filesystem(uri)
    return fs, path.rstrip("/") if path not in ("/", "") else path


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """Every protocol name `fs` answers to (fsspec gives a string or a tuple)."""
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in protocols(fs)


def arrow_filesystem(fs: fsspec.AbstractFileSystem):
    """pyarrow view of an fsspec filesystem, so Ray's readers use the same credentials and endpoints."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if is_local(fs):
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))
