"""Load ViTPose weights from wherever they live, into `ViTPose`.

Accepted refs (see `load_pose_model`):
  * a HF-format folder: config.json + model.safetensors / pytorch_model.bin (transformers' VitPoseForPoseEstimation);
  * the same folder behind any fsspec URI (s3://, gs://, file://, ...);
  * an original ViTPose / mmpose 0.x checkpoint file (.pth), `state_dict` inside or bare; the architecture is read
    off the tensors, ViTPose++ experts and `associate_keypoint_heads` included;
  * a Hugging Face hub id, downloaded when the hub is reachable.

Every failure is a `CheckpointError` whose message is one line naming the ref and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .devices import check_device
from .hub import HUB_ID, hub_snapshot, local_path, one_line
from .keypoint_sets import VITPOSE_PLUS_DATASETS
from .model import HEADS_BY_WIDTH, ViTPose, ViTPoseConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


class CheckpointError(ValueError):
    """A model ref that cannot be loaded; the message is one line naming the ref."""


def load_pose_model(
    ref: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> ViTPose:
    """Load a ViTPose model in eval mode from a folder, fsspec URI, original .pth, or HF hub id.

    `dtype`: None / "fp32" (default), "fp16", "bf16", or a torch dtype.
    """
    target_dtype = resolve_dtype(dtype)
    check_device(device)
    name = str(ref)
    config, state_dict = read_checkpoint(name)
    model = build_model(config, state_dict, name)
    return model.to(device=device, dtype=target_dtype).eval().requires_grad_(False)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise CheckpointError(f"dtype {dtype} is not a floating point type")
        return dtype
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}: use one of fp32, fp16, bf16") from None


def read_checkpoint(ref: str) -> tuple[ViTPoseConfig, dict[str, torch.Tensor]]:
    """Resolve `ref` and return the architecture plus a state dict in `ViTPose`'s own names."""
    local = local_path(ref)
    if local.exists():
        return read_local(local, ref)
    if "://" in ref:
        return read_remote(ref)
    if HUB_ID.match(ref) and not ref.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return read_local(
            hub_snapshot(ref, ["config.json", *WEIGHT_FILES], CheckpointError, "model",
                         "a local folder, an s3:// / gs:// folder, or an original .pth"),
            ref,
        )
    raise CheckpointError(f"model {ref!r} not found: no such file or folder, and not a hub id (org/name)")


def read_local(path: Path, ref: str) -> tuple[ViTPoseConfig, dict[str, torch.Tensor]]:
    if path.is_dir():
        config_file = path / "config.json"
        weights = next((path / f for f in WEIGHT_FILES if (path / f).exists()), None)
        if weights is None:
            raise CheckpointError(f"model {ref!r}: folder has none of {', '.join(WEIGHT_FILES)}")
        if not config_file.exists():
            raise CheckpointError(f"model {ref!r}: folder has {weights.name} but no config.json")
        try:
            hf_config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"model {ref!r}: config.json is not valid JSON ({exc})") from None
        return convert_hf(hf_config, read_state_dict(weights, ref), ref)
    state_dict = read_state_dict(path, ref)
    if any(k.startswith("backbone.embeddings.") for k in state_dict):
        raise CheckpointError(
            f"model {ref!r}: a transformers state dict without its config.json; pass the folder holding both"
        )
    return convert_original(state_dict, ref)


def read_state_dict(path: Path, ref: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / torch pickle, unwrapping `state_dict` / `model` nesting."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            # weights_only: a checkpoint is data, never code to run.
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a broken file
        raise CheckpointError(f"model {ref!r}: cannot read {path.name} (truncated or corrupt?): {one_line(exc)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and key in loaded and isinstance(loaded[key], Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"model {ref!r}: {path.name} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"model {ref!r}: {path.name} holds no tensors")
    return state


def read_remote(uri: str) -> tuple[ViTPoseConfig, dict[str, torch.Tensor]]:
    """Copy a remote folder's config + weights (or a single file) to a temp dir, then load it."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        is_dir = fs.isdir(path)
        is_file = not is_dir and fs.isfile(path)
    except Exception as exc:  # noqa: BLE001 - backends raise their own error types
        raise CheckpointError(f"model {uri!r}: cannot reach it: {one_line(exc)}") from None
    if not (is_dir or is_file):
        raise CheckpointError(f"model {uri!r} not found")
    with tempfile.TemporaryDirectory(prefix="vitpose-ckpt-") as tmp:
        if is_file:
            local = Path(tmp) / Path(path).name
            fs.get(path, str(local))
            return read_local(local, uri)
        names = {Path(p).name for p in fs.ls(path, detail=False)}
        for name in ("config.json",) + WEIGHT_FILES:
            if name in names:
                fs.get(f"{path.rstrip('/')}/{name}", str(Path(tmp) / name))
                if name in WEIGHT_FILES:
                    break  # one weight file is enough; safetensors preferred
        return read_local(Path(tmp), uri)


# ---------------------------------------------------------------------------------------------------------------
# transformers (HF) format -> native names
# ---------------------------------------------------------------------------------------------------------------

HF_RENAMES = [
    (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"^backbone\.embeddings\.position_embeddings$", "backbone.pos_embed"),
    (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_before\.", r"backbone.blocks.\1.norm1."),
    (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_after\.", r"backbone.blocks.\1.norm2."),
    (r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"backbone.blocks.\1.attn.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.", r"backbone.blocks.\1.mlp."),
    (r"^backbone\.layernorm\.", "backbone.last_norm."),
    (r"^head\.conv\.", "keypoint_head.final_layer."),
    (r"^head\.deconv1\.", "keypoint_head.deconv_layers.0."),
    (r"^head\.batchnorm1\.", "keypoint_head.deconv_layers.1."),
    (r"^head\.deconv2\.", "keypoint_head.deconv_layers.3."),
    (r"^head\.batchnorm2\.", "keypoint_head.deconv_layers.4."),
]
HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def convert_hf(hf: dict, state: dict[str, torch.Tensor], ref: str) -> tuple[ViTPoseConfig, dict[str, torch.Tensor]]:
    """transformers' VitPoseConfig + state dict -> (ViTPoseConfig, native state dict)."""
    if hf.get("model_type") != "vitpose":
        raise CheckpointError(f"model {ref!r}: config.json model_type is {hf.get('model_type')!r}, not 'vitpose'")
    bb = hf.get("backbone_config") or {}
    if bb.get("hidden_act", "gelu") != "gelu" or hf.get("scale_factor", 4) != 4:
        raise CheckpointError(f"model {ref!r}: only gelu backbones with a 4x decoder are supported")
    depth = int(bb.get("num_hidden_layers", 12))
    # transformers feeds the decoder from the last of out_indices (0 = embeddings); later layers are dead weight.
    out_indices = bb.get("out_indices") or [depth]
    used_depth = int(out_indices[-1]) % (depth + 1) if int(out_indices[-1]) < 0 else int(out_indices[-1])
    patch = bb.get("patch_size", 16)
    labels = hf.get("id2label") or {}
    head_weight = state.get("head.conv.weight")
    num_keypoints = len(labels) if labels else (head_weight.shape[0] if head_weight is not None else 17)
    try:
        config = ViTPoseConfig(
            image_size=tuple(bb.get("image_size", (256, 192))),
            patch_size=int(patch[0] if isinstance(patch, (list, tuple)) else patch),
            hidden_size=int(bb.get("hidden_size", 768)),
            num_layers=used_depth,
            num_heads=int(bb.get("num_attention_heads", 12)),
            mlp_ratio=float(bb.get("mlp_ratio", 4)),
            qkv_bias=bool(bb.get("qkv_bias", True)),
            layer_norm_eps=float(bb.get("layer_norm_eps", 1e-12)),
            num_keypoints=num_keypoints,
            decoder="simple" if hf.get("use_simple_decoder", True) else "classic",
            num_experts=int(bb.get("num_experts", 1)),
            part_features=int(bb.get("part_features", 0) or 0) if int(bb.get("num_experts", 1)) > 1 else 0,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model {ref!r}: config.json describes no valid ViTPose: {exc}") from None

    native: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if (m := HF_QKV.match(key)) is not None:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = tensor
            continue
        for pattern, replacement in HF_RENAMES:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                native[new_key] = tensor
                break
        else:
            native[key] = tensor  # reported as unexpected by build_model
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise CheckpointError(f"model {ref!r}: layer {layer} attention lacks {kind} of {', '.join(missing)}")
        native[f"backbone.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    drop_layers_beyond(native, used_depth)
    return config, native


def drop_layers_beyond(state: dict[str, torch.Tensor], depth: int) -> None:
    for key in [k for k in state if (m := re.match(r"^backbone\.blocks\.(\d+)\.", k)) and int(m.group(1)) >= depth]:
        del state[key]


# ---------------------------------------------------------------------------------------------------------------
# original ViTPose / mmpose 0.x .pth: names already native; architecture inferred from the tensors
# ---------------------------------------------------------------------------------------------------------------

IGNORED_ORIGINAL_KEYS = ("backbone.cls_token",)  # trained but never used by ViTPose's forward


def convert_original(state: dict[str, torch.Tensor], ref: str) -> tuple[ViTPoseConfig, dict[str, torch.Tensor]]:
    """Infer width, depth, heads, decoder, keypoints, experts and associate heads from an original state dict."""
    state = {k: v for k, v in state.items() if k not in IGNORED_ORIGINAL_KEYS}
    if any(k.startswith("backbone.layers.") for k in state):
        raise CheckpointError(
            f"model {ref!r}: an mmpose 1.x (mmpretrain ViT) checkpoint; convert it with mmpose's tools or to HF format"
        )
    required = ("backbone.pos_embed", "backbone.patch_embed.proj.weight", "keypoint_head.final_layer.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"model {ref!r}: not a ViTPose checkpoint (no {', '.join(missing)})")

    pos = state["backbone.pos_embed"]
    hidden = int(pos.shape[-1])
    patch = int(state["backbone.patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^backbone\.blocks\.(\d+)\.", k)))
    fc1 = state.get("backbone.blocks.0.mlp.fc1.weight")
    experts = sorted({int(m.group(1)) for k in state if (m := re.match(r"^backbone\.blocks\.0\.mlp\.experts\.(\d+)\.weight$", k))})
    head_weight = state["keypoint_head.final_layer.weight"]

    associate = []
    for index in sorted({int(m.group(1)) for k in state if (m := re.match(r"^associate_keypoint_heads\.(\d+)\.", k))}):
        prefix = f"associate_keypoint_heads.{index}."
        keypoints = int(state[prefix + "final_layer.weight"].shape[0])
        if index + 1 < len(VITPOSE_PLUS_DATASETS):
            # Heads may be trained wider than their dataset; ViTPose++'s own split keeps the first K channels.
            wanted = VITPOSE_PLUS_DATASETS[index + 1].num_keypoints
            if keypoints > wanted:
                for suffix in ("final_layer.weight", "final_layer.bias"):
                    if prefix + suffix in state:
                        state[prefix + suffix] = state[prefix + suffix][:wanted]
                keypoints = wanted
        associate.append((head_type(state, prefix), keypoints))

    try:
        config = ViTPoseConfig(
            image_size=infer_image_size(int(pos.shape[1]) - 1, patch),
            patch_size=patch,
            hidden_size=hidden,
            num_layers=depth,
            num_heads=HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64)),
            mlp_ratio=(fc1.shape[0] / hidden) if fc1 is not None else 4.0,
            qkv_bias="backbone.blocks.0.attn.qkv.bias" in state,
            layer_norm_eps=1e-6,
            num_keypoints=int(head_weight.shape[0]),
            decoder=head_type(state, "keypoint_head."),
            num_experts=len(experts) if experts else 1,
            part_features=int(state["backbone.blocks.0.mlp.experts.0.weight"].shape[0]) if experts else 0,
            associate_heads=tuple(associate),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model {ref!r}: tensors describe no valid ViTPose: {exc}") from None
    return config, state


def head_type(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    return "classic" if f"{prefix}deconv_layers.0.weight" in state else "simple"


def infer_image_size(num_patches: int, patch: int) -> tuple[int, int]:
    """Crop size from the patch count: ViTPose crops are 4:3 (H:W) or square."""
    for rows_per_col in (4 / 3, 1.0):
        cols = round(math.sqrt(num_patches / rows_per_col))
        rows = round(cols * rows_per_col)
        if rows * cols == num_patches:
            return rows * patch, cols * patch
    raise ValueError(f"cannot infer the crop size from {num_patches} position embeddings")


# ---------------------------------------------------------------------------------------------------------------


def build_model(config: ViTPoseConfig, state: dict[str, torch.Tensor], ref: str) -> ViTPose:
    """Instantiate `ViTPose(config)` and load `state` strictly, with one-line errors naming the offending keys."""
    with torch.device("meta"):
        model = ViTPose(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"model {ref!r}: missing {len(missing)} tensor(s): {short_list(missing)}")
    if unexpected:
        raise CheckpointError(f"model {ref!r}: unexpected {len(unexpected)} tensor(s): {short_list(unexpected)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"model {ref!r}: tensor {key} has shape {tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model


def short_list(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
