"""Videos, frames and tracks of prediction rows, counted exactly: `report` streams them part by part, `export`
counts what it wrote of a table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TRACK_KEY = np.dtype([("video", "<i8"), ("track", "<i8")])


class VideoTally:
    """Videos, frames and tracks of the frame rows (rows with a video_uri and a frame_index), streamed part by part.

    videos: distinct video_uri; frames: frame rows; tracks: distinct (video_uri, track_id) of their persons with a
    track id. Exact: the video URIs are kept once each (a small number next to the rows) and the tracks as 16-byte
    (video number, track id) keys, deduplicated when the new keys outnumber the kept ones (amortised O(n log n))."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}  # video_uri -> its number
        self.frames = 0
        self._tracks = np.zeros(0, TRACK_KEY)  # distinct keys
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    @property
    def videos(self) -> int:
        return len(self.codes)

    @property
    def tracks(self) -> int:
        self._merge()
        return len(self._tracks)

    def _merge(self) -> None:
        if self._pending:
            self._tracks = np.unique(np.concatenate([self._tracks, *self._pending]))
            self._pending, self._pending_size = [], 0

    def add(self, table: pa.Table, counts: np.ndarray, flat: pa.Array) -> None:
        """Fold in one part: `table` (with video_uri, frame_index when it has videos), its persons per row `counts`
        and its persons flattened `flat` (`pc.list_flatten` of the column)."""
        if "video_uri" not in table.column_names or "frame_index" not in table.column_names:
            return
        framed = pc.and_(pc.is_valid(table.column("video_uri")), pc.is_valid(table.column("frame_index")))
        framed = np.asarray(framed.to_numpy(zero_copy_only=False), bool)
        if not framed.any():
            return
        self.frames += int(framed.sum())
        encoded = table.column("video_uri").filter(pa.array(framed)).combine_chunks().dictionary_encode()
        numbers = np.array([self.codes.setdefault(uri, len(self.codes)) for uri in encoded.dictionary.to_pylist()],
                           np.int64)  # one Python step per video of the part, not per row
        row_codes = np.full(table.num_rows, -1, np.int64)
        row_codes[framed] = numbers[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)]
        if not len(flat) or "track_id" not in [f.name for f in flat.type]:
            return
        person_codes = np.repeat(row_codes, counts)
        ids = pc.struct_field(flat, "track_id")
        keep = (person_codes >= 0) & np.asarray(pc.is_valid(ids).to_numpy(zero_copy_only=False), bool)
        if not keep.any():
            return
        keys = np.zeros(int(keep.sum()), TRACK_KEY)
        keys["video"] = person_codes[keep]
        keys["track"] = np.asarray(pc.fill_null(ids, 0).to_numpy(zero_copy_only=False), np.int64)[keep]
        keys = np.unique(keys)
        self._pending.append(keys)
        self._pending_size += len(keys)
        if self._pending_size > max(len(self._tracks), 65536):
            self._merge()


def video_counts(rows: pa.Table) -> dict[str, int]:
    """videos (distinct video_uri), frames (rows with a video_uri and a frame_index) and tracks (distinct
    (video_uri, track_id) of their persons with a track id) of one table of prediction rows."""
    tally = VideoTally()
    persons = rows.column("persons").combine_chunks()
    counts = pc.fill_null(pc.list_value_length(persons), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    tally.add(rows, counts, pc.list_flatten(persons))
    return {"videos": tally.videos, "frames": tally.frames, "tracks": tally.tracks}
