"""Write a random-weight ViTPose checkpoint for smoke runs where no pretrained one can be fetched.

    python -m vitpose_batch.demo_checkpoint /tmp/vitpose-demo.pth [--size S]

It is an original-format (mmpose 0.x) `.pth`, since vitpose_core's parameter names are the original ones. The
keypoints it gives are meaningless; the pipeline, geometry and throughput are those of the real model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitpose_core.model import SIZES, ViTPose, ViTPoseConfig


def write_demo_checkpoint(path: str | Path, size: str = "S", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = ViTPose(ViTPoseConfig.from_size(size))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "norm" not in name:
                tensor.normal_(0, 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--size", default="S", choices=sorted(SIZES))
    args = parser.parse_args()
    print(write_demo_checkpoint(args.path, args.size))


if __name__ == "__main__":
    main()
