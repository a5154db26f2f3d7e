"""PyTorch-native int8: the quantized model lowered through ``torch.export`` and Inductor's x86 int8 kernels.

The model is traced by ``torch.export`` with its activation points in ``export-torch`` mode: every point becomes
a ``quantize_per_tensor``/``dequantize_per_tensor`` pair and every int8 layer a ``dequantize_per_channel`` of its
int8 codes, the reference form that torchao's ``convert_pt2e`` writes after the ``X86InductorQuantizer``.
``torch.compile`` with constant folding (``freezing``) matches those patterns and runs oneDNN int8
convolutions and matmuls. The qparams are finequant's own (its calibration, AdaRound codes, mixed
precision), not re-calibrated by pt2e's observers, so the compiled model computes what was simulated.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
import torch

from finequant.errors import FinequantError
from finequant.quant.api import QuantizedModel


def _register_int8_lowering() -> None:
    """torchao's X86 Inductor module defines the ``quantized_decomposed`` ops (pt2e's quantize/dequantize) and,
    on import, registers Inductor's passes that turn them into oneDNN int8 convolutions and matmuls (weight
    prepack, output-quantization and post-op fusion): the pt2e flow's own lowering, reused as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401


def export_int8(qm: QuantizedModel, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The statically quantized model as a ``torch.export`` program in the pt2e quantize/dequantize form, for
    ``example``'s shape (oneDNN packs int8 weights for a static input shape)."""
    from finequant.runtime.onnx_qdq import static_same_padding

    points = qm.points
    if points is None:
        raise FinequantError(f"method '{qm.config.method}' quantizes no activations statically; the torch-inductor "
                             "backend runs static int8 models (method static or qat)")
    _register_int8_lowering()
    model = qm.model.eval()
    try:
        with qm.tracing("export-torch"), torch.no_grad(), static_same_padding(model, example, pad_before_point=True):
            return torch.export.export(model, (example,))
    except Exception as e:  # torch.export raises many types for what it cannot trace
        raise FinequantError(f"torch.export could not trace the quantized model in module '{points.last_scope}' "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); run it on onnxruntime, "
                             "or keep that module float (QuantConfig.skip)") from e


class CompiledInt8:
    """The int8 model compiled by Inductor, one program per batch shape (exported and compiled on first use);
    ``seconds`` records how long each took."""

    def __init__(self, qm: QuantizedModel) -> None:
        self.qm = qm
        self.programs: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.programs:
            t0 = time.perf_counter()
            program = export_int8(self.qm, x)
            t1 = time.perf_counter()
            self.programs[shape] = torch.compile(program.module())
            with frozen_inference():  # the first call compiles
                out = self.programs[shape](x)
            self.seconds[f"export_s_b{shape[0]}"] = t1 - t0
            self.seconds[f"compile_s_b{shape[0]}"] = time.perf_counter() - t1
            return out
        with frozen_inference():
            return self.programs[shape](x)


@contextlib.contextmanager
def frozen_inference() -> Iterator[None]:
    """Inference with Inductor's ``freezing``: weights become constants, which the int8 passes need to pack them.
    On every call, not only the first: after a strict ``torch.export`` elsewhere in the process (pt2e's), a
    program compiled before can compile again, and without freezing it runs its dequantized weights as fp32
    convolutions (ResNet-50 at batch 1: 83 instead of 28 ms, 2 threads)."""
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        yield
