"""Random-weight ViTPose checkpoints built with transformers, in HF and in original (.pth) form.

There are no pretrained weights on these machines, so correctness is agreement with transformers on the same
random weights. Weights are drawn wider than transformers' init (std 0.02 makes nearly constant heatmaps, which
would hide a wrong layer) and BatchNorm statistics are non-trivial.
"""

from __future__ import annotations

from pathlib import Path

import torch


def hf_model(
    hidden: int = 64,
    depth: int = 2,
    heads: int = 4,
    keypoints: int = 17,
    simple: bool = True,
    experts: int = 1,
    part_features: int = 16,
    image_size: tuple[int, int] = (256, 192),
    seed: int = 0,
):
    """A transformers VitPoseForPoseEstimation with seeded random weights, in eval mode."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = VitPoseBackboneConfig(
        image_size=list(image_size),
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_experts=experts,
        part_features=part_features,
        layer_norm_eps=1e-6,
        out_indices=[depth],
    )
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=simple, num_labels=keypoints)
    torch.manual_seed(seed)
    model = VitPoseForPoseEstimation(config).eval()
    randomize_(model, seed)
    return model


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(0.5 + noise.abs())
        elif name.endswith("running_mean"):
            tensor.copy_(0.3 * noise)
        elif "norm" in name and name.endswith("weight"):
            tensor.copy_(1.0 + 0.2 * noise)
        else:
            fan_in = tensor[0].numel() if tensor.dim() > 1 else 16
            tensor.copy_(noise / fan_in**0.5)


def save_hf(model, folder: Path, safetensors: bool = True) -> Path:
    """config.json plus model.safetensors, or plus pytorch_model.bin (older hub repos; transformers 5 writes none)."""
    if safetensors:
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), Path(folder) / "pytorch_model.bin")
    return Path(folder)


# HF name -> original ViTPose (mmpose 0.x) name, written independently of vitpose_core's loader.
_ORIGINAL_NAMES = {
    "backbone.embeddings.patch_embeddings.projection": "backbone.patch_embed.proj",
    "backbone.embeddings.position_embeddings": "backbone.pos_embed",
    "backbone.layernorm": "backbone.last_norm",
    "head.deconv1": "keypoint_head.deconv_layers.0",
    "head.batchnorm1": "keypoint_head.deconv_layers.1",
    "head.deconv2": "keypoint_head.deconv_layers.3",
    "head.batchnorm2": "keypoint_head.deconv_layers.4",
    "head.conv": "keypoint_head.final_layer",
}
_LAYER_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp": "mlp",
}


def original_state_dict(model) -> dict[str, torch.Tensor]:
    """The HF model's weights under original ViTPose key names, qkv fused, with the unused cls_token."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict().items():
        if ".attention.attention." in name:
            layer = name.split(".")[3]
            part, kind = name.split(".")[-2:]
            qkv.setdefault(f"backbone.blocks.{layer}.attn.qkv.{kind}", {})[part] = tensor
            continue
        if name.startswith("backbone.encoder.layer."):
            layer, rest = name.split(".", 4)[3:]
            for hf_part, original_part in _LAYER_PARTS.items():
                if rest.startswith(hf_part + "."):
                    out[f"backbone.blocks.{layer}.{original_part}{rest[len(hf_part):]}"] = tensor
                    break
            else:
                raise KeyError(name)
            continue
        prefix, _, leaf = name.rpartition(".")
        key = prefix if prefix in _ORIGINAL_NAMES else name
        out[_ORIGINAL_NAMES[key] + ("" if key == name else "." + leaf)] = tensor
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    out["backbone.cls_token"] = torch.zeros(1, 1, model.config.backbone_config.hidden_size)
    return out


def head_state_dict(model, prefix: str) -> dict[str, torch.Tensor]:
    """The decoder of an HF model under an original head prefix (`keypoint_head.` or `associate_keypoint_heads.i.`)."""
    return {
        "".join([prefix, k.removeprefix("keypoint_head.")]): v
        for k, v in original_state_dict(model).items()
        if k.startswith("keypoint_head.")
    }


def save_original(state: dict[str, torch.Tensor], path: Path, nested: bool = True) -> Path:
    torch.save({"meta": {"epoch": 210}, "state_dict": state} if nested else state, path)
    return path
