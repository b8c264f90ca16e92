"""fsspec helpers: one filesystem per URI (credentials from the environment), JSON documents with one-line errors,
files written whole or not at all (`write_atomically`).

How an annotate OUTPUT is laid out, committed and resumed is `vitpose_batch.output`'s job; a command opens its
OUTPUT once, as a `vitpose_batch.output.layout.Output`, and hands that down.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import fsspec.spec

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


def _abandon(fs: Any, handle: Any, target: str) -> None:
    """Leave nothing behind after a failed write: no half upload becomes visible, no temporary file stays."""
    try:
        if isinstance(handle, fsspec.spec.AbstractBufferedFile):
            handle.discard()  # object stores: abort a multipart upload
            handle.closed = True  # and skip the final flush that would publish what was written so far
        else:
            handle.close()
            if fs.exists(target):
                fs.rm(target)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def write_atomically(output: str, write: Callable[[Any], Any]) -> None:
    """Call `write(handle)` with a binary handle on `output` (local path or fsspec URL); readers see the whole file
    or, when `write` raises, nothing: a local file is written under a temporary name in its folder and renamed at
    the end; other file systems get one upload that only becomes visible when it completes."""
    fs, path = open_filesystem(output)
    local = is_local(fs)
    if local:
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        target = f"{path}.{uuid.uuid4().hex}.tmp"
    else:
        target = path
    handle = fs.open(target, "wb")
    try:
        write(handle)
    except BaseException:
        _abandon(fs, handle, target)
        raise
    handle.close()
    if local:
        fs.mv(target, path)
