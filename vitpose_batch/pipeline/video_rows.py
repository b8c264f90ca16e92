"""The driver's side of video tracking: segments' rows held until their track ids are final, then released.

Each segment's actor tracks on its own (vitpose_batch.pipeline.video_worker), so the ids of the persons it met at its
first frame are its own. Its link row, the last it sends, gives the persons at its first frame and at the next
segment's first frame (the anchor); vitpose_batch.video.track_links.TrackLinker joins the chain, in whatever order
segments finish, and the held rows are rewritten with the final ids and released to the writer. On a resumed run a
segment whose previous segment is already in OUTPUT reads that frame's rows back (`lookback`) instead.

Held memory: the rows (keypoints, not pixels) of segments finished ahead of an unfinished earlier one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitpose_batch.files.addresses import frame_uri
from vitpose_batch.pipeline.video_worker import LINK_COLUMNS
from vitpose_batch.schemas.predictions import PERSON_TYPE
from vitpose_batch.video.track_links import FramePersons, TrackLinker, relabel

log = logging.getLogger("vitpose_batch")


def frame_persons(frame_index: int | None, persons: list[dict], link: bool = False) -> FramePersons | None:
    """A row's `persons` cell as the linker's FramePersons (None without a frame); `link`: a link row's cell, whose
    `box_score` holds the person's gap (vitpose_batch.pipeline.video_worker._persons_cell)."""
    if frame_index is None:
        return None
    ids = [p["track_id"] for p in persons]
    boxes = np.array([p["bbox"] for p in persons], np.float64).reshape(-1, 4)
    keypoints = (np.array([p["keypoints"] for p in persons], np.float64).reshape(len(persons), -1, 3) if persons
                 else np.zeros((0, 0, 3)))
    gaps = np.array([round(p["box_score"]) for p in persons], np.int64) if link else None
    return FramePersons(frame_index, np.array(ids, np.int64), boxes, keypoints, gaps)


def relabel_persons(persons: pa.ListArray, mapping: dict[int, int]) -> pa.ListArray:
    """The `persons` column with each `track_id` mapped (vitpose_batch.video.track_links.relabel)."""
    if not mapping:
        return persons
    flat = persons.flatten()
    ids = flat.field("track_id")
    new = relabel(ids.fill_null(-1).to_numpy(zero_copy_only=False), mapping)
    new_ids = pa.array(new, pa.int64(), mask=ids.is_null().to_numpy(zero_copy_only=False))
    fields = [flat.field(f.name) if f.name != "track_id" else new_ids for f in PERSON_TYPE]
    struct = pa.StructArray.from_arrays(fields, fields=list(PERSON_TYPE))
    return pa.ListArray.from_arrays(persons.offsets, struct, type=persons.type)


class VideoRows:
    """Feed the video actors' batches in (`take`), get the rows to write out, track ids final.

    `lookup(uris) -> {uri: persons}` reads rows OUTPUT already holds (resumed runs)."""

    def __init__(self, sigmas: np.ndarray, lookup: Callable[[list[str]], dict[str, list[dict]]]) -> None:
        self.linker = TrackLinker(sigmas)
        self.lookup = lookup
        self.held: dict[tuple[str, int], list[pa.Table]] = {}
        self.known: dict[tuple[str, int], dict[int, int]] = {}

    def take(self, batch: pa.Table) -> Iterator[pa.Table]:
        """A batch of actor rows -> the tables that can be written now (no private columns)."""
        links = batch.column("_link").to_numpy(zero_copy_only=False)
        if links.any():
            for row in batch.filter(pa.array(links)).to_pylist():
                yield from self.add_link(row)
            batch = batch.filter(pa.array(~links))
        if not batch.num_rows:
            return
        no_persons = pc.equal(pc.list_value_length(batch.column("persons")), 0)
        if pc.any(no_persons).as_py():  # error rows, empty frames: no id to wait for
            yield self.finish(batch.filter(no_persons), {})
            batch = batch.filter(pc.invert(no_persons))
            if not batch.num_rows:
                return
        keys = list(zip(batch.column("video_uri").to_pylist(), batch.column("_segment").to_pylist()))
        for key in dict.fromkeys(keys):
            rows = batch.filter(pc.and_(pc.equal(batch.column("video_uri"), key[0]),
                                        pc.equal(batch.column("_segment"), key[1])))
            if key in self.known:  # arrived after its mapping was known: relabel at once
                yield self.finish(rows, self.known[key])
            else:
                self.held.setdefault(key, []).append(rows)

    def add_link(self, row: dict) -> Iterator[pa.Table]:
        video, segment = row["video_uri"], row["_segment"]
        head = frame_persons(row["frame_index"], row["persons"], link=True)
        anchor = frame_persons(row["_anchor_frame"], row["_anchor"], link=True)
        previous = None
        if row["_lookback"] is not None:
            uri = frame_uri(video, row["_lookback"])
            found = self.lookup([uri])
            if uri in found:
                previous = frame_persons(row["_lookback"], found[uri])
        self.linker.add(video, segment, head, anchor, previous)
        for ready in self.linker.ready(video):
            mapping = self.linker.mapping(video, ready)
            self.known[(video, ready)] = mapping
            for rows in self.held.pop((video, ready), []):
                yield self.finish(rows, mapping)

    def finish(self, rows: pa.Table, mapping: dict[int, int]) -> pa.Table:
        persons = relabel_persons(rows.column("persons").combine_chunks(), mapping)
        rows = rows.set_column(rows.schema.get_field_index("persons"), rows.schema.field("persons"), persons)
        return rows.drop_columns([c for c in LINK_COLUMNS if c in rows.column_names])

    def close(self) -> Iterator[pa.Table]:
        """Rows still held when the stream ended (a segment whose previous one never came): written with the ids
        their own segment gave them."""
        for (video, segment), tables in sorted(self.held.items()):
            log.warning("video %s segment %d: its track ids could not be joined to the previous segment's; "
                        "written with its own", video, segment)
            for rows in tables:
                yield self.finish(rows, {})
        self.held.clear()


def output_lookup(read_tables: Callable[[list[str]], Iterator[pa.Table]]) -> Callable[[list[str]], dict]:
    """A `VideoRows.lookup` over `read_tables(columns)` (the parts of OUTPUT, one table at a time)."""

    def lookup(uris: list[str]) -> dict[str, list[dict]]:
        wanted = pa.array(uris, pa.string())
        found: dict[str, list[dict]] = {}
        for table in read_tables(["image_uri", "persons"]):
            hit = table.filter(pc.is_in(table.column("image_uri"), value_set=wanted))
            for row in hit.to_pylist():
                found[row["image_uri"]] = row["persons"]
        return found

    return lookup
