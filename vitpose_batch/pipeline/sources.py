"""Inputs -> a Ray Dataset of images to label, one row per image, in the forms large corpora come in.

* a folder / prefix (recursive) or a glob of image files, local or any fsspec URL: listed here, read by workers;
* a COCO JSON whose `images[].file_name` resolve against `image_root`: ids kept;
* WebDataset `.tar` shards (Ray Data's read_webdataset): member `key.jpg` of shard S is `S#key.jpg`;
* Parquet shards with an image-bytes column (`image_column`): row i of shard S is `S#i`;
* videos (`.mp4`, `.mov`, `.mkv`, `.avi`, `.webm`), alone or beside images: listed whole, like shards, and cut into
  segments by vitpose_batch.pipeline.video_segments; frame N of video V is `V#frame=N`.

Every source yields the columns `image_uri` (string), `image_id` (int64, nullable) and, for shards, `data` (the
encoded bytes, already read). Plain files are read by the decode stage, so listing stays cheap for the driver.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from vitpose_batch.files.image_reader import check_shards, parquet_rows
from vitpose_batch.files.storage import arrow_filesystem, protocols, read_json
from vitpose_batch.files.addresses import VIDEO_SUFFIXES, is_video
from vitpose_batch.files.uris import canonical_prefix, canonical_uri, split_scheme
from vitpose_batch.output.resume import uri_keys
from vitpose_core.filesystems import filesystem, local_path_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif")
GLOB_CHARS = "*?["
CHUNK_ROWS = 65_536  # listing rows per chunk: the driver never holds more of a streamed listing than this
SMALL_BLOCKS = 64  # blocks of a single actor batch before blocks grow


class InputError(ValueError):
    """An INPUT that cannot be read as a corpus; the message is one line naming it."""


@dataclass
class Listing:
    """What INPUT turned out to be: image files (with ids when a COCO file named them) or shards.

    `chunks()` streams the images as tables of (image_uri, image_id), canonical URIs, each image once; a folder or
    prefix is walked as it is read, so a listing of 10^8 files is never held whole. Shards are listed whole (few).
    """

    kind: str  # "files", "tar", "parquet"
    chunks: Callable[[], Iterator[pa.Table]]
    shards: list[str] | None = None
    videos: list[str] = field(default_factory=list)  # found by the walk, known once the image chunks are consumed
    coco_images: list[dict] | None = None  # the COCO JSON's images[], when INPUT was one


LISTING_SCHEMA = pa.schema([("image_uri", pa.string()), ("image_id", pa.int64())])


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _is_tar(path: str) -> bool:
    return path.lower().endswith(".tar")


def _chunked(uris: Iterator[str], ids: Iterator[int | None] | None = None) -> Iterator[pa.Table]:
    batch_uris: list[str] = []
    batch_ids: list[int | None] = []
    for uri in uris:
        batch_uris.append(uri)
        batch_ids.append(None if ids is None else next(ids))
        if len(batch_uris) == CHUNK_ROWS:
            yield pa.table({"image_uri": batch_uris, "image_id": batch_ids}, schema=LISTING_SCHEMA)
            batch_uris, batch_ids = [], []
    if batch_uris:
        yield pa.table({"image_uri": batch_uris, "image_id": batch_ids}, schema=LISTING_SCHEMA)


def walk_local(root: str, want: Callable[[str], bool]) -> Iterator[str]:
    """Canonical paths of the files under local folder `root` whose names `want` accepts, depth first, sorted per
    folder. Symlinked folders are followed, each real folder once (cycles end); a symlinked file is listed under its
    own name (see `vitpose_batch.files.uris`), dangling or not: its row then says it cannot be read."""
    root = os.path.realpath(root)
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        if folder in seen:
            continue
        seen.add(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows symlinks
                subfolders.append(os.path.realpath(entry.path) if entry.is_symlink() else entry.path)
            elif want(entry.name):
                yield entry.path
        stack.extend(reversed(subfolders))


def walk_store(fs: fsspec.AbstractFileSystem, path: str, want: Callable[[str], bool]) -> Iterator[str]:
    """Paths under an object-store prefix, page by page where the store allows it (S3), else all at once."""
    iterdir = getattr(fs, "_iterdir", None)
    if iterdir is not None and "s3" in protocols(fs):
        from fsspec.asyn import sync

        bucket, key, _ = fs.split_path(path)
        pages = iterdir(bucket, delimiter="", prefix=key.rstrip("/") + "/" if key else "")
        while True:
            try:
                info = sync(fs.loop, pages.__anext__)
            except StopAsyncIteration:
                return
            if info.get("type") != "directory" and want(info["name"]):
                yield info["name"]
    else:
        for name in fs.find(path):
            if want(name):
                yield name


def list_input(input_uri: str, image_root: str | None = None, image_column: str | None = None) -> Listing:
    """Resolve INPUT into the image files or shards it names; raises InputError when there is nothing to read.

    INPUT is what exists under that name first (a folder, a COCO JSON, an image or shard file), whatever characters
    the name holds; only when nothing exists under it, and it holds `*`, `?` or `[`, is it a glob."""
    try:
        fs, path = filesystem(input_uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"input {input_uri!r}: {exc}") from None
    scheme = split_scheme(input_uri)[0]
    local = local_path_of(input_uri) is not None

    def uri(p: str) -> str:
        return canonical_uri(p if local else f"{scheme}://{p.lstrip('/')}")

    try:
        if fs.isdir(path):
            if local:
                walk: Callable[[Callable[[str], bool]], Iterator[str]] = lambda want: walk_local(path, want)
            else:
                walk = lambda want: (uri(p) for p in walk_store(fs, path, want))  # noqa: E731
        elif fs.isfile(path):
            if path.endswith(".json"):
                return list_coco(input_uri, image_root)
            walk = lambda want: (u for u in [uri(path)] if want(u))  # noqa: E731
        elif any(c in path for c in GLOB_CHARS):
            matched = list(dict.fromkeys(uri(f) for f in sorted(fs.glob(path)) if fs.isfile(f)))
            walk = lambda want: (u for u in matched if want(u))  # noqa: E731
        else:
            raise InputError(f"input {input_uri!r} not found")
    except (FileNotFoundError, PermissionError) as exc:
        raise InputError(f"input {input_uri!r}: {type(exc).__name__}: {exc}") from None

    if image_column is not None:
        shards = list(walk(lambda p: p.endswith(".parquet")))
        if not shards:
            raise InputError(f"input {input_uri!r}: --image-column given but no .parquet shards found")
        check_shards(shards, image_column)  # every footer: a missing or non-image column is refused before work
        return Listing("parquet", lambda: iter(()), shards=shards)
    first_image = next(walk(lambda p: _is_image(p) or is_video(p)), None)
    if first_image is None:
        tars = list(walk(_is_tar))
        if tars:
            return Listing("tar", lambda: iter(()), shards=tars)
        shards = next(walk(lambda p: p.endswith(".parquet")), None)
        hint = f"; it holds Parquet shards ({shards}): name their image column with --image-column" if shards else ""
        raise InputError(f"input {input_uri!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) or videos "
                         f"({', '.join(VIDEO_SUFFIXES)}) found{hint}")
    # loose images, and maybe .tar shards and videos beside them: those are noted as the walk meets them and read too
    listing = Listing("files", lambda: iter(()), shards=[])

    def images() -> Iterator[str]:
        listing.shards.clear()
        listing.videos.clear()
        for path in walk(lambda p: _is_image(p) or _is_tar(p) or is_video(p)):
            if _is_tar(path):
                listing.shards.append(path)
            elif is_video(path):
                listing.videos.append(path)
            else:
                yield path

    listing.chunks = lambda: _chunked(images())
    return listing


def list_coco(input_uri: str, image_root: str | None) -> Listing:
    coco = read_json(input_uri, "input", InputError)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"input {input_uri!r}: a COCO JSON needs an images[] list")
    root = image_root if image_root is not None else posixpath.dirname(input_uri.rstrip("/"))
    root = canonical_prefix(root) if root else canonical_prefix(".")
    images = coco["images"]
    try:
        pairs = {canonical_uri(posixpath.join(root, str(img["file_name"]))): int(img["id"]) for img in images}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"input {input_uri!r}: images[] entries need file_name and id ({exc})") from None
    if not pairs:
        raise InputError(f"input {input_uri!r}: images[] is empty")
    return Listing("files", lambda: _chunked(iter(pairs), iter(pairs.values())), coco_images=images)


ITEM_SCHEMA = pa.schema([("image_uri", pa.string()), ("image_id", pa.int64()), ("data", pa.large_binary())])


def files_dataset(new_items: Iterator[pa.Table], rows_per_block: int):
    """A Ray Dataset of ITEM_SCHEMA rows for image files, or None when there are none.

    `new_items` (listing chunks already filtered against OUTPUT) are put in the object store block by block, so the
    driver holds refs, not the listing.
    """
    import ray

    refs = []
    for chunk in new_items:
        items = pa.table({"image_uri": chunk.column("image_uri"), "image_id": chunk.column("image_id"),
                          "data": pa.nulls(chunk.num_rows, pa.large_binary())}, schema=ITEM_SCHEMA)
        start = 0
        while start < items.num_rows:
            # Blocks of whole actor batches (a block of 20 for batches of 16 would cost a 4-image call too): one
            # batch each at first, so a small run spreads over every actor, then ~1,024 rows, so 10^8 images are
            # 10^5 blocks, not 10^7.
            rows = rows_per_block if len(refs) < SMALL_BLOCKS else rows_per_block * max(1, 1024 // rows_per_block)
            refs.append(ray.put(items.slice(start, rows)))
            start += rows
    return ray.data.from_arrow_refs(refs) if refs else None


def shards_dataset(kind: str, uris: list[str], finished=None, image_column: str | None = None,
                   image_root: str | None = None):
    """A Ray Dataset of ITEM_SCHEMA rows for the members of WebDataset `.tar` or Parquet shards.

    Members are only known once a worker opens a shard, so `finished` (a resume KeySet) travels to the workers and
    filters there.
    """
    import ray

    if kind == "tar":
        fs, _ = filesystem(uris[0])
        ds = ray.data.read_webdataset(
            [filesystem(u)[1] for u in uris], decoder=None, filesystem=arrow_filesystem(fs),
            override_num_blocks=len(uris),
        )
        protocol = "" if local_path_of(uris[0]) is not None else split_scheme(uris[0])[0] + "://"
        items = ds.map_batches(tar_members, batch_format="pyarrow", fn_kwargs={"protocol": protocol})
    else:
        shards = ray.data.from_items([{"shard": u} for u in uris], override_num_blocks=len(uris))
        items = shards.map_batches(parquet_members, batch_size=1, batch_format="pyarrow",
                                   fn_kwargs={"column": image_column, "image_root": image_root})
    if finished is not None and len(finished):
        items = items.map_batches(drop_finished, batch_format="pyarrow", fn_kwargs={"finished": ray.put(finished)})
    return items


def _is_image_column(column: str) -> bool:
    # read_webdataset splits a member name at its first dot: `a.b.jpg` is key `a`, column `b.jpg`
    return ("." + column.lower()).endswith(IMAGE_EXTENSIONS)


def tar_members(batch: pa.Table, protocol: str) -> pa.Table:
    """read_webdataset rows (one column per member suffix) -> ITEM_SCHEMA rows, one per image member: a key with a
    `.jpg` and a `.png` member is two images, and a member named with extra dots (`a.b.jpg`) keeps its name."""
    image_columns = [c for c in batch.column_names if not c.startswith("__") and _is_image_column(c)]
    uris, data = [], []
    urls, keys = batch.column("__url__").to_pylist(), batch.column("__key__").to_pylist()
    columns = {c: batch.column(c).to_pylist() for c in image_columns}
    for row, (url, key) in enumerate(zip(urls, keys)):
        for column in image_columns:  # a sample with no image member (labels only) has nothing to annotate
            if isinstance(columns[column][row], (bytes, bytearray)):  # absent members come as None or NaN
                uris.append(f"{protocol}{url.lstrip('/') if protocol else url}#{key}.{column}")
                data.append(columns[column][row])
    return pa.table({"image_uri": uris, "image_id": [None] * len(uris), "data": data}, schema=ITEM_SCHEMA)


def parquet_members(batch: pa.Table, column: str, image_root: str | None = None) -> pa.Table:
    """One Parquet shard (a single-row batch naming it) -> ENCODED rows, row i as `shard#i` (vitpose_batch.files.image_reader)."""
    return parquet_rows(batch.column("shard")[0].as_py(), column, image_root)


def drop_finished(batch: pa.Table, finished) -> pa.Table:
    """Shard members OUTPUT already holds, dropped where the data is (`finished`: a resume KeySet)."""
    import ray


    if isinstance(finished, ray.ObjectRef):  # one copy in the object store, read by every task of the node
        finished = ray.get(finished)
    return batch.filter(pa.array(~finished.contains(uri_keys(batch.column("image_uri")))))
