"""Our ViTPose equals transformers' VitPoseForPoseEstimation on the same random weights."""

from __future__ import annotations

import pytest
import torch

import vitpose_core as vc
from tests import checkpoint_factory as factory

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def reference_heatmaps(hf, pixel_values, dataset_index=None):
    with torch.no_grad():
        return hf(pixel_values, dataset_index=dataset_index).heatmaps


def ours(model, pixel_values, dataset_index=None):
    with torch.no_grad():
        return model(pixel_values, dataset_index=dataset_index)


def crops(n: int, size=(256, 192), seed: int = 1) -> torch.Tensor:
    return torch.randn((n, 3, *size), generator=torch.Generator().manual_seed(seed))


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.std() > 0.05, "reference heatmaps are flat: the comparison would prove nothing"
    err = (actual - expected).abs().max().item()
    assert err <= ATOL, f"max abs difference {err:.2e} > {ATOL}"


@pytest.mark.parametrize("simple", [True, False], ids=["simple-decoder", "classic-decoder"])
@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_hf_folder_matches_transformers(tmp_path, simple, safetensors):
    hf = factory.hf_model(simple=simple, seed=3)
    folder = factory.save_hf(hf, tmp_path / "ckpt", safetensors=safetensors)
    model = vc.load_pose_model(folder)
    assert model.config.image_size == (256, 192)
    assert model.config.num_keypoints == 17 and model.config.decoder == ("simple" if simple else "classic")
    x = crops(3)
    heatmaps = ours(model, x)
    assert heatmaps.shape == (3, 17, 64, 48)
    assert_same(heatmaps, reference_heatmaps(hf, x))


def test_classic_decoder_uses_batchnorm_statistics(tmp_path):
    hf = factory.hf_model(simple=False, seed=4)
    assert hf.head.batchnorm1.running_var.std() > 0.1  # the factory made them non-trivial
    model = vc.load_pose_model(factory.save_hf(hf, tmp_path / "ckpt"))
    bn = model.keypoint_head.deconv_layers[1]
    torch.testing.assert_close(bn.running_mean, hf.head.batchnorm1.running_mean)
    torch.testing.assert_close(bn.running_var, hf.head.batchnorm1.running_var)


def test_moe_with_mixed_dataset_indices(tmp_path):
    hf = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, seed=5)
    model = vc.load_pose_model(factory.save_hf(hf, tmp_path / "ckpt"))
    assert model.config.num_experts == 6 and model.config.part_features == 16
    x = crops(6, seed=2)
    index = torch.tensor([0, 3, 5, 1, 3, 0])
    expected = reference_heatmaps(hf, x, index)
    assert_same(ours(model, x, index), expected)
    # The experts really differ per dataset: the same crop under another index gives other heatmaps.
    other = reference_heatmaps(hf, x, torch.tensor([2, 2, 2, 2, 2, 2]))
    assert (other - expected).abs().max() > 1e-2


def test_vitpose_small_sized_model(tmp_path):
    hidden, depth, heads = 384, 12, 12  # ViTPose-S
    hf = factory.hf_model(hidden=hidden, depth=depth, heads=heads, simple=True, seed=6)
    model = vc.load_pose_model(factory.save_hf(hf, tmp_path / "ckpt"))
    assert (model.config.hidden_size, model.config.num_layers, model.config.num_heads) == (384, 12, 12)
    x = crops(2, seed=7)
    assert_same(ours(model, x), reference_heatmaps(hf, x))


def test_out_indices_before_last_layer(tmp_path):
    """transformers decodes from the last out_index; layers after it are unused and must not change the result."""
    hf = factory.hf_model(depth=3, seed=8)
    hf.config.backbone_config.out_indices = [2]
    folder = factory.save_hf(hf, tmp_path / "ckpt")
    hf = transformers.VitPoseForPoseEstimation.from_pretrained(folder).eval()
    model = vc.load_pose_model(folder)
    assert model.config.num_layers == 2
    x = crops(2, seed=9)
    assert_same(ours(model, x), reference_heatmaps(hf, x))


@pytest.mark.parametrize("nested", [True, False], ids=["state_dict-inside", "bare"])
@pytest.mark.parametrize("simple", [True, False], ids=["simple-decoder", "classic-decoder"])
def test_original_pth_matches_transformers(tmp_path, simple, nested):
    # An original .pth holds no head count: widths off the ViT table get 64-dim heads, so 128 wide -> 2 heads.
    hf = factory.hf_model(hidden=128, heads=2, simple=simple, seed=10)
    path = factory.save_original(factory.original_state_dict(hf), tmp_path / "vitpose.pth", nested=nested)
    model = vc.load_pose_model(path)
    assert model.config.decoder == ("simple" if simple else "classic")
    assert model.config.image_size == (256, 192) and model.config.num_keypoints == 17
    x = crops(3, seed=11)
    assert_same(ours(model, x), reference_heatmaps(hf, x))


def test_original_pth_infers_small_architecture(tmp_path):
    hf = factory.hf_model(hidden=384, depth=12, heads=12, keypoints=17, seed=12)
    model = vc.load_pose_model(factory.save_original(factory.original_state_dict(hf), tmp_path / "s.pth"))
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio) == (384, 12, 12, 4.0)
    x = crops(1, seed=13)
    assert_same(ours(model, x), reference_heatmaps(hf, x))


def test_vitpose_plus_pth_with_associate_heads(tmp_path):
    """ViTPose++ original: dataset 0 uses keypoint_head, dataset i uses associate_keypoint_heads.{i-1}."""
    counts = [14, 16, 17, 17, 133]  # AIC, MPII, AP-10K, APT-36K, COCO-WholeBody
    base = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, keypoints=17, seed=20)
    state = factory.original_state_dict(base)
    per_head = {}
    for i, k in enumerate(counts):
        other = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, keypoints=k, seed=21 + i)
        other.backbone.load_state_dict(base.backbone.state_dict())  # one shared backbone, its own head
        per_head[i + 1] = other
        state.update(factory.head_state_dict(other, f"associate_keypoint_heads.{i}."))
    model = vc.load_pose_model(factory.save_original(state, tmp_path / "vitpose+_base.pth"))
    assert model.config.num_experts == 6
    assert model.config.num_heads_out == (17, 14, 16, 17, 17, 133)

    x = crops(2, seed=30)
    for dataset in (0, 1, 5):
        index = torch.full((2,), dataset)
        reference = base if dataset == 0 else per_head[dataset]
        heatmaps = ours(model, x, index)
        assert heatmaps.shape[1] == (17, 14, 16, 17, 17, 133)[dataset]
        assert_same(heatmaps, reference_heatmaps(reference, x, index))
    with pytest.raises(ValueError, match="mixes datasets"):
        ours(model, x, torch.tensor([0, 5]))


def test_wider_associate_head_is_cut_to_its_dataset(tmp_path):
    base = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, seed=40)
    state = factory.original_state_dict(base)
    wide = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, keypoints=20, seed=41)
    state.update(factory.head_state_dict(wide, "associate_keypoint_heads.0."))  # AIC has 14 keypoints
    model = vc.load_pose_model(factory.save_original(state, tmp_path / "plus.pth"))
    x = crops(1, seed=42)
    index = torch.tensor([1])
    wide.backbone.load_state_dict(base.backbone.state_dict())
    assert_same(ours(model, x, index), reference_heatmaps(wide, x, index)[:, :14])


@pytest.mark.parametrize("dtype", ["fp16", "bf16", torch.bfloat16])
def test_low_precision_load(tmp_path, dtype):
    hf = factory.hf_model(seed=50)
    model = vc.load_pose_model(factory.save_hf(hf, tmp_path / "ckpt"), dtype=dtype)
    expected_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    assert all(p.dtype == expected_dtype for p in model.parameters())
    x = crops(2, seed=51)
    heatmaps = ours(model, x.to(expected_dtype)).float()
    reference = reference_heatmaps(hf, x)
    # Half precision keeps the heatmaps' shape: correlation with fp32 stays near 1.
    corr = torch.corrcoef(torch.stack([heatmaps.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.99
