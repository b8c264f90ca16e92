"""The seed page's pipeline as the reference: transformers' VitPoseForPoseEstimation holding the weights of one of our
original-format checkpoints, run as the page shows it, one image at a time.

    hf = hf_twin(checkpoint)              # transformers' model, same weights (checked against ours)
    figures = run_seed(hf, photos, device="cuda", dtype="bf16")
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def hf_twin(checkpoint: Path):
    """transformers' VitPoseForPoseEstimation (fp32, CPU) with the weights of an original-format .pth, after checking
    that it and vitpose_core's model give the same heatmaps on a random crop (RuntimeError if not)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    import vitpose_core as vc
    from vitpose_core.checkpoints import HF_QKV, HF_RENAMES

    ours = vc.load_pose_model(str(checkpoint))
    config = ours.config
    backbone = VitPoseBackboneConfig(
        image_size=list(config.image_size), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, out_indices=[config.num_layers], layer_norm_eps=config.layer_norm_eps)
    hf = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=config.num_keypoints,
                                                use_simple_decoder=config.decoder == "simple")).eval()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {}
    for key in hf.state_dict():
        if (m := HF_QKV.match(key)) is not None:  # the original fuses query, key and value
            layer, part, kind = m.groups()
            fused = state[f"backbone.blocks.{layer}.attn.qkv.{kind}"]
            weights[key] = fused.chunk(3)[("query", "key", "value").index(part)]
            continue
        native = next((re.sub(p, r, key) for p, r in HF_RENAMES if re.search(p, key)), None)
        if native is None or native not in state:
            raise KeyError(f"{checkpoint}: no original tensor for transformers' {key}")
        weights[key] = state[native]
    hf.load_state_dict(weights, strict=True)
    crop = torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs, mine = hf(crop).heatmaps, ours(crop)
    if not torch.allclose(theirs, mine, rtol=1e-3, atol=1e-4 * float(theirs.abs().max())):
        raise RuntimeError(f"vitpose_core's model and transformers' disagree on the weights of {checkpoint} "
                           f"(max difference {float((theirs - mine).abs().max()):.3g})")
    return hf


def seed_pipeline(processor, model, images, boxes, device, dtype) -> None:
    """The seed page, per image: VitPoseImageProcessor -> VitPoseForPoseEstimation -> post_process_pose_estimation."""
    for image, image_boxes in zip(images, boxes):
        if not len(image_boxes):
            continue
        inputs = processor(image, boxes=[np.asarray(image_boxes).tolist()], return_tensors="pt")
        with torch.inference_mode():
            outputs = model(inputs["pixel_values"].to(device, dtype))
        outputs.heatmaps = outputs.heatmaps.float()
        processor.post_process_pose_estimation(outputs, boxes=[image_boxes])


def run_seed(hf, datas: list[bytes], boxes: list[np.ndarray], device: str, dtype: str) -> dict:
    """The seed pipeline from JPEG bytes (PIL decode included), one image at a time, after one untimed image."""
    from PIL import Image
    from transformers import VitPoseImageProcessor

    processor, model = VitPoseImageProcessor(), hf.to(device, DTYPES[dtype])

    def pipeline(chosen: list[bytes], chosen_boxes: list[np.ndarray]) -> None:
        for data, these in zip(chosen, chosen_boxes):
            with Image.open(io.BytesIO(data)) as image:
                seed_pipeline(processor, model, [image.convert("RGB")], [these], device, DTYPES[dtype])

    first = next((i for i, these in enumerate(boxes) if len(these)), None)
    if first is None:
        raise ValueError(f"none of the {len(datas)} seed images has a person box")
    pipeline(datas[first:first + 1], boxes[first:first + 1])  # warm-up: kernels, allocator
    start = time.perf_counter()
    pipeline(datas, boxes)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    persons = sum(len(b) for b in boxes)
    return {"images": len(datas), "persons": persons, "seconds": seconds, "crops_per_s": persons / seconds}
