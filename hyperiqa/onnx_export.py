"""The whole scoring path as one ONNX graph: crops (N, 3, P, P) RGB in [0, 1] -> scores (N,).

Normalisation, backbone, LDA, hyper network, the per-image target net and the label affine are all in
the graph, so an ONNX Runtime user only cuts crops of the model's patch size. The batch is dynamic, the
crop size fixed (a fixed-size backbone such as Swin is built for it). Exported by torch.onnx's dynamo
exporter, which needs the packages of the `onnx` extra (onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from hyperiqa.utils import UserError

INPUT, OUTPUT = "crops", "scores"


class ScoringGraph(nn.Module):
    """What predict does per batch of crops, as a module: (x - mean) / std, then the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(model.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.input_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, crops: Tensor) -> Tensor:
        return self.model((crops - self.mean) / self.std)


def export_onnx(model: nn.Module, patch_size: int, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write `model` (eval mode, CPU, fp32) as a self-contained .onnx file; returns its path."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (what torch.onnx's dynamo exporter translates with)
    except ImportError as exc:
        raise UserError(f"--format onnx needs {exc.name}: pip install 'hyperiqa-tune[onnx]'") from None
    path = Path(path)
    graph = ScoringGraph(model.float().cpu().eval()).eval()
    example = torch.rand(2, 3, patch_size, patch_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(quiet):  # the exporter prints progress lines
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), verbose=False)
    props = {"patch_size": str(patch_size), "input": f"{INPUT}: float32 (N, 3, {patch_size}, {patch_size}) RGB in "
             "[0, 1]; normalisation is in the graph", "output": f"{OUTPUT}: float32 (N,), higher is better"}
    for key, value in (metadata or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    proto = program.model_proto
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))  # weights inside the file: a ResNet-50 is ~100 MB, far under 2 GB
    return path
