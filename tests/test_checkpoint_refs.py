"""Every kind of model ref loads, and every bad ref fails with a one-line error naming it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import vitpose_core as vc
from tests import checkpoint_factory as factory

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    hf = factory.hf_model(seed=60)
    folder = factory.save_hf(hf, tmp_path_factory.mktemp("hf") / "vitpose-tiny")
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(61))
    with torch.no_grad():
        expected = hf(x).heatmaps
    return folder, x, expected


def assert_loads_same(ref, hf_folder):
    _, x, expected = hf_folder
    model = vc.load_pose_model(ref)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)


def error_of(ref, **kwargs) -> str:
    with pytest.raises(vc.CheckpointError) as info:
        vc.load_pose_model(ref, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error spans lines: {message!r}"
    return message


def test_file_uri(hf_folder):
    assert_loads_same(f"file://{hf_folder[0]}", hf_folder)


def test_hub_id_from_local_cache(hf_folder, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub (here its offline cache, laid out as a download leaves it)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test-org--vitpose-tiny"
    shutil.copytree(hf_folder[0], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert_loads_same("test-org/vitpose-tiny", hf_folder)


def test_unreachable_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = error_of("usyd-community/vitpose-base-simple")
    assert "'usyd-community/vitpose-base-simple'" in message and "hub" in message


def test_missing_path():
    message = error_of("/nonexistent/vitpose-b.pth")
    assert "'/nonexistent/vitpose-b.pth' not found" in message


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "model.safetensors" in error_of(tmp_path)


def test_folder_without_config(hf_folder, tmp_path):
    shutil.copy(hf_folder[0] / "model.safetensors", tmp_path)
    assert "no config.json" in error_of(tmp_path)


def test_bad_config_json(hf_folder, tmp_path):
    shutil.copytree(hf_folder[0], tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in error_of(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    assert "model_type is 'vit'" in error_of(tmp_path / "m")


def test_wrong_shape_names_the_tensor(hf_folder, tmp_path):
    shutil.copytree(hf_folder[0], tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["backbone_config"]["image_size"] = [256, 256]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    message = error_of(tmp_path / "m")
    assert "backbone.pos_embed has shape (1, 193, 64)" in message and "(1, 257, 64)" in message


@pytest.fixture(scope="module")
def original_state():
    return factory.original_state_dict(factory.hf_model(hidden=128, heads=2, seed=62))


def test_missing_tensor(original_state, tmp_path):
    state = dict(original_state)
    del state["backbone.blocks.1.norm2.weight"]
    message = error_of(factory.save_original(state, tmp_path / "m.pth"))
    assert "missing 1 tensor(s): backbone.blocks.1.norm2.weight" in message


def test_unexpected_tensor(original_state, tmp_path):
    state = dict(original_state, **{"neck.extra.weight": torch.zeros(3)})
    assert "unexpected 1 tensor(s): neck.extra.weight" in error_of(factory.save_original(state, tmp_path / "m.pth"))


def test_not_a_vitpose_checkpoint(tmp_path):
    path = factory.save_original({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    assert "not a ViTPose checkpoint" in error_of(path)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_weights(hf_folder, tmp_path, name):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(hf_folder[0] / "config.json", folder)
    hf = factory.hf_model(seed=60)
    factory.save_hf(hf, tmp_path / "full", safetensors=name.endswith("safetensors"))
    data = (tmp_path / "full" / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    message = error_of(folder)
    assert f"cannot read {name} (truncated or corrupt?)" in message


def test_truncated_pth(original_state, tmp_path):
    path = factory.save_original(original_state, tmp_path / "m.pth")
    path.write_bytes(path.read_bytes()[:1000])
    assert "cannot read m.pth" in error_of(path)


def test_bad_dtype(hf_folder):
    assert "unknown dtype 'int8'" in error_of(hf_folder[0], dtype="int8")


def test_s3_folder_and_pth(hf_folder, original_state, s3_server, s3_env, tmp_path):
    """A checkpoint folder (and a .pth) on a real S3 server (SeaweedFS on 127.0.0.1) loads through s3:// URIs."""
    bucket = s3_server.make_bucket("models-ckpt")
    fs = s3_server.filesystem()
    fs.put(str(hf_folder[0]), f"{bucket}/vitpose/tiny", recursive=True)
    assert_loads_same(f"s3://{bucket}/vitpose/tiny", hf_folder)
    assert_loads_same(f"s3://{bucket}/vitpose/tiny/", hf_folder)

    path = factory.save_original(original_state, tmp_path / "orig.pth")
    fs.put(str(path), f"{bucket}/orig.pth")
    model = vc.load_pose_model(f"s3://{bucket}/orig.pth")
    assert model.config.hidden_size == 128
    assert "not found" in error_of(f"s3://{bucket}/vitpose/nothing-here")


def test_gcs_folder(hf_folder, gcs_server, gcs_env):
    bucket = gcs_server.make_bucket("models-gcs")
    fs = gcs_server.filesystem()
    for name in ("config.json", "model.safetensors"):
        fs.put(str(hf_folder[0] / name), f"{bucket}/tiny/{name}")
    assert_loads_same(f"gs://{bucket}/tiny", hf_folder)
