"""onnxruntime for the ONNX detectors: sessions, telling YOLOX from RTMDet, YOLOX's batch dimension, IO binding.

onnxruntime uses CUDAExecutionProvider when `device` starts with "cuda" and the provider is installed (and starts),
otherwise the CPU (with a warning if CUDA was asked for); `detector.device` says which ("cuda:N" or "cpu").
`num_threads` sets the intra-op threads of the one session both paths use (default: the CPU cores this process may
use, at most 8). ONNX detectors run in fp32 (an fp16 conversion could only be judged by its box AP on a GPU).

Which path runs (`OnnxDetector`, chosen per call; both give the same boxes, see the tests):

* numpy path: numpy images on a CPU session. cv2 letterbox, `session.run`, numpy decoding / NMS.
* torch path: any call with a torch tensor in it, and every call on a CUDA session (numpy images are then uploaded
  once, as uint8). Letterbox (`resize_like_cv2`: the numpy path's pixels), RGB -> BGR and the model's
  normalisation happen on the session's device; onnxruntime reads the batch in place through IO binding
  (`run_bound`) and only the candidates / final boxes cross to the host (this CUDA side has not run on a GPU yet).
  torch's own CPU work follows torch's thread setting.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hub import one_line
from .base import COMMON_OPTIONS, Detector, DetectorError, positive_int

YOLOX_STRIDES = (8, 16, 32)  # the grid strides of a YOLOX raw head: `onnx_layout` counts its anchors with them
ONNX_OPTIONS = COMMON_OPTIONS | {"num_threads"}


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def onnx_session(model: Path | bytes, ref: str, device: str, num_threads: Any) -> tuple[Any, str]:
    """Open an onnxruntime session of a file (or serialized model) on CUDA when asked for and available, else CPU."""
    try:
        import onnxruntime as ort  # lazy: the optional [onnx] extra
    except ImportError:
        raise DetectorError(
            f"detector {ref!r}: onnxruntime is not installed; pip install 'vitpose-batch[onnx]'"
        ) from None
    threads = default_threads() if num_threads is None else positive_int(num_threads, "num_threads", ref)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    used = "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            used = f"cuda:{index}"
        else:
            warnings.warn(f"detector {ref!r}: onnxruntime has no CUDAExecutionProvider here; running on the CPU",
                          RuntimeWarning, stacklevel=4)
    elif device != "cpu":
        raise DetectorError(f"detector {ref!r}: unknown device {device!r} (use 'cpu' or 'cuda[:N]')")
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                       providers=providers)
    except Exception as exc:  # noqa: BLE001 - protobuf, truncated, unsupported op: one answer to the user
        raise DetectorError(f"detector {ref!r}: cannot be read as an ONNX model ({one_line(exc)})") from None
    if used != "cpu" and "CUDAExecutionProvider" not in session.get_providers():
        # The provider is installed but could not start (CUDA / cuDNN libraries): the session runs on the CPU, and
        # the torch path must feed it host memory.
        warnings.warn(f"detector {ref!r}: onnxruntime's CUDAExecutionProvider did not start; running on the CPU",
                      RuntimeWarning, stacklevel=4)
        used = "cpu"
    return session, used


def onnx_layout(session: Any) -> str:
    """'yolox', 'rtmdet' or a description of what the file's inputs/outputs look like."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    in_shapes = [list(i.shape) for i in inputs]
    if len(inputs) == 1 and len(in_shapes[0]) == 4:
        shape = in_shapes[0]
        names = {o.name: list(o.shape) for o in outputs}
        if set(names) == {"dets", "labels"} and len(names["dets"]) == 3 and len(names["labels"]) == 2:
            if names["dets"][2] in (5, None) or isinstance(names["dets"][2], str):
                return "rtmdet"
        fixed = all(isinstance(d, int) for d in shape)
        if fixed and shape[0] == 1 and shape[1] == 3 and len(outputs) == 1:
            out = list(outputs[0].shape)
            anchors = sum((shape[2] // s) * (shape[3] // s) for s in YOLOX_STRIDES)
            if len(out) == 3 and out[0] == 1 and out[1] == anchors and isinstance(out[2], int) and out[2] >= 6:
                return "yolox"
    described = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs)
    described_out = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
    return f"inputs [{described}] -> outputs [{described_out}]"


def yolox_batched_session(path: Path, session: Any, ref: str, device: str, num_threads: Any) -> Any | None:
    """A session of the YOLOX file with a dynamic batch dimension, or None where that cannot be had.

    The raw-head export declares batch 1, but its graph usually holds no batch-1 constant: marking dim 0 of the
    input and outputs as "batch" (and dropping the stale inferred shapes in value_info) is then enough. A probe with
    a batch of 2 zeros must give twice the batch-1 session's output; without the `onnx` package, or with a graph
    that does not pass the probe, the caller keeps the batch-1 session (correct, one image per call).
    """
    try:
        import onnx  # lazy: the optional [onnx] extra; without it YOLOX stays at batch 1

        model = onnx.load(str(path))
        for value in (model.graph.input[0], *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        del model.graph.value_info[:]
        batched, _ = onnx_session(model.SerializeToString(), ref, device, num_threads)
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
        zeros = np.zeros((2, *shape[1:]), np.float32)
        two = batched.run(None, {batched.get_inputs()[0].name: zeros})[0]
        one = session.run(None, {name: zeros[:1]})[0]
        if two.shape == (2, *one.shape[1:]) and np.allclose(two, one, rtol=1e-4, atol=1e-4):
            return batched
    except Exception:  # noqa: BLE001 - no onnx package, an unreadable or batch-1-bound graph: stay at batch 1
        pass
    return None


def run_bound(session: Any, input_name: str, blob: torch.Tensor,
              outputs: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """One onnxruntime call reading the float32 torch tensor `blob` in place (CPU or CUDA) through IO binding.

    `outputs` maps each output name to a preallocated float32 tensor on blob's device, written in place, or to None
    for an output whose size is data-dependent: onnxruntime then allocates it on the host and it comes back as a
    numpy array. Returns {name: tensor or numpy array}.
    """
    blob = blob.contiguous()
    cuda = blob.device.type == "cuda"
    where = ("cuda", blob.device.index or 0) if cuda else ("cpu", 0)
    binding = session.io_binding()
    binding.bind_input(input_name, *where, np.float32, list(blob.shape), blob.data_ptr())
    for name, tensor in outputs.items():
        if tensor is None:
            binding.bind_output(name, "cpu")
        else:
            binding.bind_output(name, *where, np.float32, list(tensor.shape), tensor.data_ptr())
    if cuda:
        torch.cuda.synchronize(blob.device)  # torch wrote `blob` on its own stream, not on onnxruntime's
    session.run_with_iobinding(binding)  # returns once the outputs are written (onnxruntime syncs its stream)
    values = binding.get_outputs()
    return {name: values[i].numpy() if tensor is None else tensor for i, (name, tensor) in enumerate(outputs.items())}


class OnnxDetector(Detector):
    """An onnxruntime session run on chunks of `batch_size` images, by the numpy or the torch (device) path."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, batch_size: int = 8,
                 max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]
        self.batch_size = positive_int(batch_size, "batch_size", name)
        self.torch_device = torch.device(device)

    def detect(self, images: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        # Tensors stay on their device; on a CUDA session numpy images are uploaded once, as uint8, and
        # pre-processed there too. On the CPU numpy images take the numpy path (cv2's resize is the faster one).
        on_torch = self.torch_device.type == "cuda" or any(isinstance(image, torch.Tensor) for image in images)
        results = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                results += self.detect_torch(chunk) if on_torch else self.detect_numpy(chunk)
        return results

    def detect_numpy(self, chunk: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def detect_torch(self, chunk: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError
