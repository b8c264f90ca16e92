"""Hugging Face hub downloads shared by model and detector loading, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

# "org/name": what a Hugging Face hub id looks like (a local path that exists is always taken first).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def local_path(ref: str) -> Path:
    """`ref` as a local path: `file://` dropped, `~` expanded (it need not exist)."""
    return Path(ref.removeprefix("file://")).expanduser()


def one_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: message` of an exception, whitespace collapsed, cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}"


def hub_snapshot(repo_id: str, patterns: list[str], error: type[ValueError], what: str, instead: str) -> Path:
    """Download (or find in the local cache) the files of `repo_id` matching `patterns`.

    Any failure (offline, unknown repo, auth) raises `error` naming `what` and the repo, suggesting `instead`.
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:  # noqa: BLE001 - every failure is one answer to the user
        raise error(
            f"{what} {repo_id!r}: cannot download it from the Hugging Face hub ({one_line(exc, 160)}); "
            f"pass {instead} instead"
        ) from None


def copy_remote(uri: str, dest: str | Path) -> Path:
    """Copy the file or folder at fsspec `uri` (s3://, gs://, ...) into the local folder `dest`; returns its copy."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    target = Path(dest) / (Path(path.rstrip("/")).name or "remote")
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", str(target), recursive=True)
    elif fs.isfile(path):
        fs.get(path, str(target))
    else:
        raise FileNotFoundError(uri)
    return target
