"""One spelling per image: canonical URIs, so one file is one row however INPUT was written.

Local paths are absolute, with `..`, repeated slashes and symlinked folders resolved: `a//b`, `a/../a/b` and a path
through a symlinked folder are one file. A symlinked *file* keeps its own name (boxes files and people refer to images
by name, and a dangling link whose target appears later must stay the same image). Object-store keys are exact
(`a//b` and `a/b` are two different S3 objects), so only the scheme is normalised (`s3a://` -> `s3://`,
`gcs://` -> `gs://`). Shard members keep their `#member` suffix after the canonical shard URI.
"""

from __future__ import annotations

import os

SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "local": "file"}


def split_scheme(uri: str) -> tuple[str, str]:
    """(scheme, rest) with the scheme lower-cased and aliases folded; ("", path) for a plain local path."""
    if "://" not in uri:
        return "", uri
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    return SCHEME_ALIASES.get(scheme, scheme), rest


def is_local_uri(uri: str) -> bool:
    return split_scheme(uri)[0] in ("", "file")


def canonical_uri(uri: str) -> str:
    """The one spelling of `uri` that rows store (see the module docstring)."""
    scheme, rest = split_scheme(uri)
    if scheme in ("", "file"):
        folder, name = os.path.split(os.path.abspath(rest))
        return os.path.join(os.path.realpath(folder), name)
    return f"{scheme}://{rest}"


def canonical_prefix(uri: str) -> str:
    """A folder / prefix URI in canonical form, without a trailing slash (kept for a bucket root)."""
    scheme, rest = split_scheme(uri)
    if scheme in ("", "file"):
        return os.path.realpath(rest)
    stripped = rest.rstrip("/")
    return f"{scheme}://{stripped if '/' in stripped else stripped + '/'}"
