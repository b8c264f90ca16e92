"""The OUTPUT protocol without Ray: canonical URIs, leases (local, S3, GCS), staged commits and crash recovery,
provenance refusals, the resume anti-join and error redo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vitpose_batch.output import lease as leases
from vitpose_batch.output import parts, provenance, resume
from vitpose_batch.output.layout import Output
from vitpose_batch.files.uris import canonical_prefix, canonical_uri
from vitpose_batch.pipeline.sources import list_input, walk_local
from vitpose_batch.schemas.predictions import PREDICTION_SCHEMA, make_table

ROOT = Path(__file__).resolve().parents[1]


def rows(uris, errors=None, retryable=None) -> pa.Table:
    n = len(uris)
    errors = errors or [None] * n
    return make_table(uris, [None] * n, [10] * n, [10] * n, [[] for _ in uris], errors, retryable)


def live_rows(output) -> list[str]:
    return [u for t in parts.iter_part_tables(str(output), ["image_uri"]) for u in t.column("image_uri").to_pylist()]


# ---------------------------------------------------------------------------------------------- canonical URIs


def test_one_spelling_per_local_file(tmp_path):
    real = tmp_path / "a" / "b"
    real.mkdir(parents=True)
    (real / "x.jpg").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    spellings = [f"{tmp_path}/a//b/x.jpg", f"{tmp_path}/a/../a/b/x.jpg", f"{tmp_path}/link/b/x.jpg",
                 f"file://{tmp_path}/a/b/x.jpg", f"{tmp_path}/a/b/./x.jpg"]
    assert {canonical_uri(s) for s in spellings} == {str(real / "x.jpg")}
    # a symlinked file is named by its own name (boxes match images by name)
    (real / "y.jpg").symlink_to(real / "x.jpg")
    assert canonical_uri(f"{tmp_path}/link/b/y.jpg") == str(real / "y.jpg")


def test_object_keys_are_exact_and_schemes_folded():
    assert canonical_uri("s3a://bkt/a//b.jpg") == "s3://bkt/a//b.jpg"  # two different S3 keys stay two
    assert canonical_uri("GCS://bkt/x.jpg") == "gs://bkt/x.jpg"
    assert canonical_prefix("s3://bkt/images/") == "s3://bkt/images"


def test_folder_walk_lists_each_file_once(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        (corpus / name).write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "c.jpg").write_bytes(b"x")
    (corpus / "ext.jpg").symlink_to(outside / "c.jpg")  # a file outside the folder, under its own name
    (corpus / "loop").symlink_to(corpus)  # a folder cycle
    (corpus / "linked").symlink_to(outside)  # a symlinked folder: walked once, by its real path
    (corpus / "later.jpg").symlink_to(tmp_path / "not-yet.jpg")  # dangling: listed, its row will say so
    found = list(walk_local(str(corpus), lambda n: n.endswith((".jpg", ".png"))))
    assert sorted(found) == sorted([str(corpus / "a.jpg"), str(corpus / "sub" / "b.png"), str(corpus / "ext.jpg"),
                                    str(outside / "c.jpg"), str(corpus / "later.jpg")])
    # the same folder spelled through a symlink and with `..` lists the same URIs
    (tmp_path / "alias").symlink_to(corpus)
    for spelling in (str(tmp_path / "alias"), f"{corpus}/sub/..//"):
        listed = [u for c in list_input(spelling).chunks() for u in c.column("image_uri").to_pylist()]
        assert sorted(listed) == sorted(found)


# ------------------------------------------------------------------------------------------------------- keys


def test_key_set_membership_matches_a_python_set():
    rng = np.random.default_rng(0)
    uris = [f"s3://bkt/img-{i}.jpg" for i in rng.permutation(20_000)]
    keys = resume.uri_keys(uris[:10_000])
    shared_hi = keys[:50].copy()
    shared_hi[:, 1] ^= np.uint64(1)  # same upper 64 bits, other lower: must not count as present
    index = resume.KeySet(np.concatenate([keys, shared_hi[:25]]))
    probe = resume.uri_keys(uris)
    expected = np.array([i < 10_000 for i in range(20_000)])
    np.testing.assert_array_equal(index.contains(probe), expected)
    np.testing.assert_array_equal(index.contains(shared_hi[25:]), np.zeros(25, bool))
    smaller = index.without(keys[:100])
    assert not smaller.contains(keys[:100]).any() and smaller.contains(keys[100:]).all()


# ----------------------------------------------------------------------------------------------------- leases


def test_local_lease_refuses_a_second_run_and_passes_on_when_its_holder_dies(tmp_path):
    output = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vitpose_batch.output.lease import LocalLease; "
         "from vitpose_batch.output.layout import Output; "
         f"LocalLease(Output.open({output!r}), 'run-A').acquire(); print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(leases.LeaseHeld, match=rf"run run-A \(pid {holder.pid} on .*\)"):
            leases.LocalLease(Output.open(output), "run-B").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: taken over at once
    with leases.LocalLease(Output.open(output), "run-B"):
        with pytest.raises(leases.LeaseHeld, match="run run-B"):
            leases.LocalLease(Output.open(output), "run-C").acquire()
    with leases.LocalLease(Output.open(output), "run-C"):
        pass


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_object_store_lease_race_takeover_and_loss(store, request):
    env = request.getfixturevalue(f"{store}_env")
    bucket = env.make_bucket(f"lease-{store}")
    output = Output.open(f"{'s3' if store == 's3' else 'gs'}://{bucket}/out")
    first = leases.make_lease(output, "run-A", ttl_s=2.0)
    second = leases.make_lease(output, "run-B", ttl_s=2.0)
    first.acquire()
    with pytest.raises(leases.LeaseHeld, match="run run-A"):
        second.acquire()  # the race: a conditional create lets exactly one win
    # run-A stalls (its renewals stop, as in a killed or frozen driver): after the TTL run-B takes over
    first.stop.set()
    first.thread.join()
    time.sleep(2.5)
    second.acquire()
    # run-A wakes up: its next renewal finds the lease changed, and it may commit nothing more
    try:
        first.replace(first.holder.to_bytes(), first.version)
        raise AssertionError("a stale holder's conditional write went through")
    except leases.ConditionalWriteFailed:
        pass
    with pytest.raises(leases.LeaseHeld, match="run run-B"):
        leases.make_lease(output, "run-C", ttl_s=2.0).acquire()
    second.release()
    third = leases.make_lease(output, "run-C", ttl_s=2.0)
    third.acquire()
    third.release()


# ------------------------------------------------------------------------------------ commits and recovery


def test_parts_are_right_sized_and_staged_progress_survives_a_kill(tmp_path):
    output = str(tmp_path / "out")
    writer = parts.PartWriter(Output.open(output), "run1", PREDICTION_SCHEMA, {"vitpose.run_id": "run1"},
                              rows_per_file=100, commit_interval=0.0)
    uris = [f"/img/{i:04d}.jpg" for i in range(250)]
    for start in range(0, 250, 10):
        writer.add(rows(uris[start:start + 10]))
    # 2 live parts of 100; the other 50 rows staged (committed, hidden from readers)
    live = sorted(p.name for p in Path(output).glob("*.parquet"))
    assert live == ["part-run1-000000.parquet", "part-run1-000001.parquet"]
    assert [pq.read_metadata(Path(output) / n).num_rows for n in live] == [100, 100]
    assert len(list((Path(output) / "_staging").glob("*.staged"))) == 5
    del writer  # killed here: the next run folds the staged rows into a part of their own
    assert parts.recover_staging(Output.open(output)) == 50
    assert sorted(live_rows(output)) == uris
    assert not list((Path(output) / "_staging").iterdir())
    table = pq.read_table(Path(output) / "part-run1-000002.parquet")
    assert table.schema.metadata[b"vitpose.run_id"] == b"run1"
    assert pq.ParquetFile(Path(output) / live[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_crash_between_part_and_staging_cleanup_leaves_no_duplicate(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    writer = parts.PartWriter(Output.open(output), "run1", PREDICTION_SCHEMA, {}, rows_per_file=30,
                              commit_interval=0.0)
    for start in range(0, 20, 10):
        writer.add(rows([f"/img/{i}.jpg" for i in range(start, start + 10)]))
    monkeypatch.setattr(writer.fs, "rm", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # dies right after the part is written, staged chunks still there
        writer.add(rows([f"/img/{i}.jpg" for i in range(20, 30)]))
    monkeypatch.undo()
    assert len(list((Path(output) / "_staging").glob("*.staged"))) == 2
    parts.recover_staging(Output.open(output))
    assert sorted(live_rows(output)) == sorted(f"/img/{i}.jpg" for i in range(30))


def test_a_part_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "part-x-000000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(parts.PartFileError, match=r"part file .*part-x-000000.parquet is unreadable"):
        list(parts.iter_part_tables(str(tmp_path)))


# -------------------------------------------------------------------------------------------------- provenance


def test_settings_changes_are_named(tmp_path):
    model = tmp_path / "model.pth"
    model.write_bytes(b"weights v1")
    base = dict(model=str(model), model_fingerprint=provenance.fingerprint(str(model)), detector=None,
                detector_fingerprint=None, boxes="/b.json", boxes_fingerprint="sha256:1", flip_test=False,
                dataset_index=None, dtype="fp32", decode={"blur": "original"}, keypoint_set="coco")
    output = Output.open(str(tmp_path / "out"))
    os.makedirs(output.folder)
    record = provenance.create_record(output, provenance.Provenance(**base))
    provenance.check_settings(output, record, provenance.Provenance(**base))
    for change, flag in [({"flip_test": True}, "--flip-test"), ({"dataset_index": 5}, "--dataset-index"),
                         ({"boxes": None, "boxes_fingerprint": None, "detector": "/yolox.onnx"}, "--detector"),
                         ({"dtype": "bf16"}, "--dtype"), ({"decode": {"blur": "transformers"}}, "decoding")]:
        with pytest.raises(provenance.SettingsChanged, match=flag):
            provenance.check_settings(output, record, provenance.Provenance(**{**base, **change}))
    model.write_bytes(b"weights v2")  # same path, new weights
    changed = provenance.Provenance(**{**base, "model_fingerprint": provenance.fingerprint(str(model))})
    with pytest.raises(provenance.SettingsChanged, match="its weights changed"):
        provenance.check_settings(output, record, changed)


def test_corrupt_job_record_is_named(tmp_path):
    (tmp_path / "_job.json").write_text("{not json")
    with pytest.raises(provenance.RecordError, match=r"job record .*_job.json is corrupt"):
        provenance.load_record(Output.open(str(tmp_path)))


# ------------------------------------------------------------------------------------------ resume and redo


def test_resume_skips_done_images_and_redoes_errors_that_may_pass(tmp_path):
    output = Output.open(str(tmp_path / "out"))
    writer = parts.PartWriter(output, "run1", PREDICTION_SCHEMA, {}, rows_per_file=1000)
    writer.add(rows(["/c/ok.jpg", "/c/blinked.jpg", "/c/corrupt.jpg", "/c/gone.jpg"],
                    [None, "cannot read after 6 attempts", "corrupt or truncated image", "cannot read"],
                    [None, True, False, True]))
    writer.close()
    listing = [pa.table({"image_uri": ["/c/ok.jpg", "/c/blinked.jpg", "/c/corrupt.jpg", "/c/new.jpg"],
                         "image_id": pa.nulls(4, pa.int64())})]

    state = resume.scan_output(output)
    plan = resume.ResumePlan()
    todo = [u for t in resume.filter_listing(listing, state, plan) for u in t.column("image_uri").to_pylist()]
    # blinked (may pass) is redone; corrupt (permanent) is not; gone.jpg is no longer listed: its row stays
    assert todo == ["/c/blinked.jpg", "/c/new.jpg"]
    assert (plan.listed, plan.already_done, plan.new) == (4, 2, 2)
    assert resume.drop_redone_rows(output, plan.redo) == 1
    assert sorted(live_rows(output)) == ["/c/corrupt.jpg", "/c/gone.jpg", "/c/ok.jpg"]

    plan = resume.ResumePlan()
    state = resume.scan_output(output, retry_all_errors=True)
    todo = [u for t in resume.filter_listing(listing, state, plan) for u in t.column("image_uri").to_pylist()]
    assert todo == ["/c/blinked.jpg", "/c/corrupt.jpg", "/c/new.jpg"]


def test_job_record_is_json_with_the_version(tmp_path):
    output = Output.open(str(tmp_path))
    base = provenance.Provenance("m", "sha256:1", None, None, "b", "sha256:2", False, None, "fp32")
    record = provenance.create_record(output, base)
    assert json.loads((tmp_path / "_job.json").read_text()) == record
    assert record["created_by"] == provenance.package_version()


def test_a_growing_key_set_answers_as_one_sorted_set():
    """write_output's own-writes set: added batch by batch, its answers are a single KeySet's over the same keys."""
    import numpy as np

    from vitpose_batch.output.resume import GrowingKeySet, KeySet, uri_keys

    rng = np.random.default_rng(0)
    growing, added = GrowingKeySet(), []
    for batch in range(40):
        keys = uri_keys([f"s3://b/{batch}/{i}.jpg" for i in range(int(rng.integers(0, 50)))])
        growing.add(keys)
        added.append(keys)
        probe = uri_keys([f"s3://b/{int(rng.integers(0, 45))}/{i}.jpg" for i in range(60)])
        np.testing.assert_array_equal(growing.contains(probe), KeySet(np.concatenate(added)).contains(probe))
    assert len(growing.levels) <= 1 + int(np.log2(sum(len(k) for k in added)))
