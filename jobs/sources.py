"""Inputs -> a Ray Dataset of images to label, one row per image, in the forms large corpora come in.

* a folder / prefix (recursive) or a glob of image files, local or any fsspec URL: listed here, read by workers;
* a COCO JSON whose `images[].file_name` resolve against `image_root`: ids kept;
* WebDataset `.tar` shards (Ray Data's read_webdataset): member `key.jpg` of shard S is `S#key.jpg`;
* Parquet shards with an image-bytes column (`image_column`): row i of shard S is `S#i`.

Every source yields the columns `image_uri` (string), `image_id` (int64, nullable) and, for shards, `data` (the
encoded bytes, already read). Plain files are read by the decode stage, so listing stays cheap for the driver.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import read_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif")
GLOB_CHARS = "*?["


class InputError(ValueError):
    """An INPUT that cannot be read as a corpus; the message is one line naming it."""


@dataclass
class Listing:
    """What INPUT turned out to be: image files (with ids when a COCO file named them) or shards."""

    kind: str  # "files", "tar", "parquet"
    uris: list[str]
    image_ids: list[int | None]
    coco_images: list[dict] | None = None  # the COCO JSON's images[], when INPUT was one


def list_input(input_uri: str, image_root: str | None = None, image_column: str | None = None) -> Listing:
    """Resolve INPUT into the image files or shards it names; raises InputError when there is nothing to read."""
    try:
        fs, path = fsspec.core.url_to_fs(input_uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"input {input_uri!r}: {exc}") from None
    protocol = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""

    def uri(p: str) -> str:
        return p if not protocol or protocol == "file://" else protocol + p.lstrip("/")

    if path.endswith(".json") and not any(c in path for c in GLOB_CHARS):
        return list_coco(fs, path, input_uri, image_root)
    try:
        if any(c in path for c in GLOB_CHARS):
            files = sorted(fs.glob(path))
        elif fs.isdir(path):
            files = sorted(fs.find(path))
        elif fs.isfile(path):
            files = [path]
        else:
            raise InputError(f"input {input_uri!r} not found")
    except (FileNotFoundError, PermissionError) as exc:
        raise InputError(f"input {input_uri!r}: {type(exc).__name__}: {exc}") from None

    if image_column is not None:
        shards = [f for f in files if f.endswith(".parquet")]
        if not shards:
            raise InputError(f"input {input_uri!r}: --image-column given but no .parquet shards found")
        return Listing("parquet", [uri(f) for f in shards], [None] * len(shards))
    tars = [f for f in files if f.endswith(".tar")]
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if tars and not images:
        return Listing("tar", [uri(f) for f in tars], [None] * len(tars))
    if not images:
        raise InputError(f"input {input_uri!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return Listing("files", [uri(f) for f in images], [None] * len(images))


def list_coco(fs: fsspec.AbstractFileSystem, path: str, input_uri: str, image_root: str | None) -> Listing:
    coco = read_json(input_uri, "input", InputError)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"input {input_uri!r}: a COCO JSON needs an images[] list")
    root = image_root if image_root is not None else posixpath.dirname(input_uri.rstrip("/"))
    images = coco["images"]
    try:
        uris = [posixpath.join(root, str(img["file_name"])) if root else str(img["file_name"]) for img in images]
        ids = [int(img["id"]) for img in images]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"input {input_uri!r}: images[] entries need file_name and id ({exc})") from None
    if not uris:
        raise InputError(f"input {input_uri!r}: images[] is empty")
    return Listing("files", uris, ids, coco_images=images)


ITEM_SCHEMA = pa.schema([("image_uri", pa.string()), ("image_id", pa.int64()), ("data", pa.large_binary())])


def read_dataset(listing: Listing, finished: set[str], rows_per_block: int, image_column: str | None = None):
    """A Ray Dataset of ITEM_SCHEMA rows for the listing, less the images a previous run finished.

    Files are listed here, so finished ones are dropped before anything is read; shard members are only known once
    a worker opens the shard, so they are dropped there.
    """
    import ray

    if listing.kind == "files":
        pairs = {u: i for u, i in zip(listing.uris, listing.image_ids) if u not in finished}  # dedupes, keeps order
        table = pa.table(
            {"image_uri": list(pairs), "image_id": list(pairs.values()), "data": [None] * len(pairs)},
            schema=ITEM_SCHEMA,
        )
        # Blocks of exactly one actor batch: a block of 20 for batches of 16 would cost a 4-image call too.
        return ray.data.from_arrow(table).repartition(max(1, -(-len(pairs) // rows_per_block)))
    if listing.kind == "tar":
        fs, _ = fsspec.core.url_to_fs(listing.uris[0])
        ds = ray.data.read_webdataset(
            [fsspec.core.url_to_fs(u)[1] for u in listing.uris], decoder=None, filesystem=arrow_filesystem(fs),
            override_num_blocks=len(listing.uris),
        )
        protocol = listing.uris[0].split("://", 1)[0] + "://" if "://" in listing.uris[0] else ""
        items = ds.map_batches(tar_members, batch_format="pyarrow", fn_kwargs={"protocol": protocol})
    else:
        shards = ray.data.from_items([{"shard": u} for u in listing.uris], override_num_blocks=len(listing.uris))
        items = shards.map_batches(parquet_members, batch_size=1, batch_format="pyarrow",
                                   fn_kwargs={"column": image_column})
    if finished:
        items = items.map_batches(drop_finished, batch_format="pyarrow", fn_kwargs={"finished": finished})
    return items


def arrow_filesystem(fs: fsspec.AbstractFileSystem):
    """pyarrow view of an fsspec filesystem, so Ray's readers use the same credentials and endpoints."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


def tar_members(batch: pa.Table, protocol: str) -> pa.Table:
    """read_webdataset rows (one column per extension) -> ITEM_SCHEMA rows: the first image member of each key."""
    image_columns = [c for c in batch.column_names if "." + c.lower() in IMAGE_EXTENSIONS]
    uris, data = [], []
    urls, keys = batch.column("__url__").to_pylist(), batch.column("__key__").to_pylist()
    columns = {c: batch.column(c).to_pylist() for c in image_columns}
    for row, (url, key) in enumerate(zip(urls, keys)):
        found = next(((c, columns[c][row]) for c in image_columns if columns[c][row] is not None), None)
        if found is None:
            continue  # a sample with no image member (labels only): nothing to annotate
        uris.append(f"{protocol}{url.lstrip('/') if protocol else url}#{key}.{found[0]}")
        data.append(found[1])
    return pa.table({"image_uri": uris, "image_id": [None] * len(uris), "data": data}, schema=ITEM_SCHEMA)


def parquet_members(batch: pa.Table, column: str) -> pa.Table:
    """One Parquet shard (a single-row batch naming it) -> ITEM_SCHEMA rows, row i as `shard#i`."""
    shard = batch.column("shard")[0].as_py()
    fs, path = fsspec.core.url_to_fs(shard)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if column not in parquet.schema_arrow.names:
            raise InputError(f"parquet shard {shard!r} has no column {column!r} (it has {parquet.schema_arrow.names})")
        data = parquet.read(columns=[column]).column(column).cast(pa.large_binary())
    uris = [f"{shard}#{i}" for i in range(len(data))]
    return pa.table({"image_uri": uris, "image_id": pa.nulls(len(uris), pa.int64()), "data": data},
                    schema=ITEM_SCHEMA)


def drop_finished(batch: pa.Table, finished: set[str]) -> pa.Table:
    keep = [uri not in finished for uri in batch.column("image_uri").to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))
