"""Devices: one check, so that asking for a GPU torch cannot use is a one-line error, not torch's assert."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device this torch build or machine cannot use; the message is one line naming it."""


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or DeviceError when it names a GPU that is not there."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} is not a device torch knows ({exc}); use 'cpu' or 'cuda'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")
            raise DeviceError(f"device {str(device)!r}: {why} (torch {torch.__version__}); use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r}: MPS is not available here; use device='cpu'")
    return resolved
