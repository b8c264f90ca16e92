"""Videos as frames: reading them and choosing which frames to label, with no Ray in it.

- `decoding`: `scan` lists a video's frames from its packets (presentation times, pts, keyframes, size and rotation)
  without decoding them; `decode_frames` decodes a range of those frames as RGB arrays, one at a time, upright;
  `VideoError` is a video that cannot be read (one line naming the video).
- `sampling`: `sample_frames` picks the frames to label (every frame, every Nth, or the nearest to a frame rate);
  `plan_segments` cuts a video into segments of about N seconds starting at keyframes, the units of parallel work.
- `tracking`, `track_links`: pose tracks within a segment and across segment boundaries.
"""
