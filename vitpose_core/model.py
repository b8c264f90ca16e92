"""ViTPose: a plain ViT backbone and a heatmap decoder, in one file.

Shapes, for an input of (N, 3, H, W) with the usual 16 px patches:
    patch_embed  (N, 3, H, W)        -> (N, L, C)      L = (H/16) * (W/16)
    blocks       (N, L, C)           -> (N, L, C)      pre-LN attention + MLP (or ViTPose++ MoE MLP)
    last_norm    (N, L, C)           -> (N, C, H/16, W/16)
    head         (N, C, H/16, W/16)  -> (N, K, H/4, W/4)

Parameter names follow the original ViTPose (mmpose) checkpoints -- `backbone.blocks.0.attn.qkv`,
`keypoint_head.final_layer`, `associate_keypoint_heads.0...` -- so an original `.pth` loads without renaming and
HF-format folders are the ones that get converted (see `checkpoints.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Known ViT widths and their head counts; an original .pth holds no head count, so it is inferred from the width.
HEADS_BY_WIDTH = {384: 12, 768: 12, 1024: 16, 1280: 16}

# Named sizes: (hidden_size, depth, num_heads). ViTPose-S/B/L/H.
SIZES = {
    "S": (384, 12, 12),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


@dataclass
class ViTPoseConfig:
    """Architecture of a ViTPose model; everything needed to rebuild it from a state dict."""

    image_size: tuple[int, int] = (256, 192)  # (H, W) of the crops the model sees
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    num_keypoints: int = 17
    decoder: str = "simple"  # "simple" (ReLU, 4x bilinear, 3x3 conv) or "classic" (2 deconvs + 1x1 conv)
    num_experts: int = 1  # >1: ViTPose++ mixture-of-experts MLP
    part_features: int = 0  # width of each expert's slice of the MLP output
    # ViTPose++ originals keep one extra head per training dataset: (decoder, keypoints) for dataset index 1, 2, ...
    associate_heads: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.associate_heads = tuple((str(d), int(k)) for d, k in self.associate_heads)
        if self.decoder not in ("simple", "classic"):
            raise ValueError(f"decoder must be 'simple' or 'classic', got {self.decoder!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_experts > 1 and not 0 < self.part_features < self.hidden_size:
            raise ValueError(f"part_features must be in (0, {self.hidden_size}) for a MoE model")

    @classmethod
    def from_size(cls, size: str, **overrides) -> "ViTPoseConfig":
        """A config for ViTPose-S/B/L/H (`size` in "S", "B", "L", "H")."""
        hidden, depth, heads = SIZES[size.upper()]
        return cls(hidden_size=hidden, num_layers=depth, num_heads=heads, **overrides)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of patch tokens; the 16x16 conv uses padding 2, hence the +4."""
        h, w = self.image_size
        return ((h + 4 - self.patch_size) // self.patch_size + 1, (w + 4 - self.patch_size) // self.patch_size + 1)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        rows, cols = self.patch_grid
        return rows * 4, cols * 4

    @property
    def num_heads_out(self) -> tuple[int, ...]:
        """Keypoints of each head: the main head first, then the associate heads."""
        return (self.num_keypoints,) + tuple(k for _, k in self.associate_heads)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, C)


class Attention(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        # One fused projection: a single GEMM instead of three on the hot path.
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, channels = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, length, channels))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoeMlp(nn.Module):
    """ViTPose++ MLP: fc2 gives the shared first C - P channels, one expert per dataset gives the last P."""

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        self.part_features = cfg.part_features
        self.fc1 = nn.Linear(cfg.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, cfg.hidden_size - cfg.part_features)
        self.experts = nn.ModuleList(nn.Linear(hidden, cfg.part_features) for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        shared = self.fc2(h)
        if dataset_index is None:
            return torch.cat([shared, self.experts[0](h)], dim=-1)
        # Run each expert only on its own samples: a batch rarely mixes more than a couple of datasets.
        part = h.new_empty(h.shape[:-1] + (self.part_features,))
        for expert_id in torch.unique(dataset_index).tolist():
            rows = (dataset_index == expert_id).nonzero(as_tuple=True)[0]
            part[rows] = self.experts[expert_id](h[rows])
        return torch.cat([shared, part], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MoeMlp(cfg) if cfg.num_experts > 1 else Mlp(cfg)

    def forward(self, x: torch.Tensor, dataset_index: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), dataset_index)


class ViTBackbone(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        rows, cols = cfg.patch_grid
        self.patch_embed = PatchEmbed(cfg)
        # Stored with a cls slot (as trained); ViTPose has no cls token and adds that slot to every position.
        self.pos_embed = nn.Parameter(torch.zeros(1, rows * cols + 1, cfg.hidden_size))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.last_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.grid = (rows, cols)

    def forward(self, pixel_values: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(pixel_values)
        x = x + (self.pos_embed[:, 1:] + self.pos_embed[:, :1])
        for block in self.blocks:
            x = block(x, dataset_index)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)  # (N, C, rows, cols)


class SimpleHead(nn.Module):
    """ReLU, 4x bilinear upsampling, 3x3 conv to K heatmaps."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(x), scale_factor=4, mode="bilinear", align_corners=False)
        return self.final_layer(x)


class ClassicHead(nn.Module):
    """Two (4x4 stride-2 deconv, BatchNorm, ReLU) stages, then a 1x1 conv to K heatmaps."""

    def __init__(self, in_channels: int, num_keypoints: int, width: int = 256):
        super().__init__()
        # Indices 0/1/2 and 3/4/5 mirror mmpose's Sequential, so original keys (deconv_layers.4.running_var) fit.
        self.deconv_layers = nn.Sequential(
            nn.ConvTranspose2d(in_channels, width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.final_layer = nn.Conv2d(width, num_keypoints, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


def make_head(decoder: str, in_channels: int, num_keypoints: int) -> nn.Module:
    return SimpleHead(in_channels, num_keypoints) if decoder == "simple" else ClassicHead(in_channels, num_keypoints)


class ViTPose(nn.Module):
    """ViTPose / ViTPose++ top-down pose model: crops in, heatmaps at 1/4 of the crop size out."""

    def __init__(self, config: ViTPoseConfig):
        super().__init__()
        self.config = config
        self.backbone = ViTBackbone(config)
        self.keypoint_head = make_head(config.decoder, config.hidden_size, config.num_keypoints)
        self.associate_keypoint_heads = nn.ModuleList(
            make_head(decoder, config.hidden_size, keypoints) for decoder, keypoints in config.associate_heads
        )

    def head_for(self, dataset_index: torch.Tensor | None) -> tuple[nn.Module, int]:
        """The head serving these dataset indices: index 0 -> the main head, i -> associate head i-1."""
        if dataset_index is None or not len(self.associate_keypoint_heads):
            return self.keypoint_head, 0
        wanted = torch.unique(dataset_index).tolist()
        if len(wanted) != 1:
            raise ValueError(
                f"dataset_index mixes datasets {wanted} whose heads differ; call the model once per dataset"
            )
        index = int(wanted[0])
        if index == 0:
            return self.keypoint_head, 0
        if not 0 < index <= len(self.associate_keypoint_heads):
            raise ValueError(f"dataset_index {index} has no head (this checkpoint has {len(self.config.num_heads_out)})")
        return self.associate_keypoint_heads[index - 1], index

    def forward(self, pixel_values: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values (N, 3, H, W) normalised crops; dataset_index (N,) long for ViTPose++ -> (N, K, H/4, W/4)."""
        if tuple(pixel_values.shape[-2:]) != self.config.image_size:
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} but the model takes {self.config.image_size} crops"
            )
        if dataset_index is not None:
            dataset_index = torch.as_tensor(dataset_index, device=pixel_values.device).long().reshape(-1)
            if dataset_index.numel() == 1 and pixel_values.shape[0] != 1:
                dataset_index = dataset_index.expand(pixel_values.shape[0])
            if self.config.num_experts > 1 and int(dataset_index.max()) >= self.config.num_experts:
                raise ValueError(
                    f"dataset_index {int(dataset_index.max())} is out of range for {self.config.num_experts} experts"
                )
        head, _ = self.head_for(dataset_index)
        features = self.backbone(pixel_values, dataset_index if self.config.num_experts > 1 else None)
        return head(features)
