"""``QuantLayer``: a Conv/Linear/Embedding whose weights (and input activations) are quantized.

finequant owns this small core on top of plain torch ops instead of ``torch.ao.quantization``:
torch.ao is deprecated (it warns on import and its quantized dtypes are slated for removal), and
torchao's int8 paths are GPU-first (its int8 dynamic config ran ~20x slower than float on our CPU).
Fake-quant here exports to ONNX QuantizeLinear/DequantizeLinear and runs on real int8 kernels there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from finequant.errors import FinequantError
from finequant.quant import points
from finequant.quant.affine import dequantize, fake_quantize, minmax_of, qparams, quantize
from finequant.quant.nonlinear import kmeans_assign, kmeans_codebook, kmeans_dequantize, pow2_dequantize, \
    pow2_quantize
from finequant.quant.observers import OBSERVERS
from finequant.quant.spec import QuantSpec

# One source of truth for what can be quantized: layers with a weight that a kernel multiplies.
# (nn.LSTM is rewritten into Linear gate projections first: see quant/lstm.py.)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
ActMode = Literal["static", "dynamic", "float", "cast"]


@dataclass
class LayerQParams:
    """What a quantized layer needs at inference: weight scheme + qparams, activation scheme + qparams."""

    weight_spec: QuantSpec
    weight_scale: torch.Tensor | None
    weight_zero_point: torch.Tensor | None
    act_mode: ActMode = "float"
    act_spec: QuantSpec | None = None
    act_scale: torch.Tensor | None = None
    act_zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        def t(x: torch.Tensor | None) -> Any:
            return None if x is None else x.detach().cpu().flatten().tolist()

        return {"weight_spec": self.weight_spec.__dict__, "weight_scale": t(self.weight_scale),
                "weight_zero_point": t(self.weight_zero_point), "act_mode": self.act_mode,
                "act_spec": None if self.act_spec is None else self.act_spec.__dict__,
                "act_scale": t(self.act_scale), "act_zero_point": t(self.act_zero_point),
                "codebook": t(self.codebook)}


class QuantLayer(nn.Module):
    """Wraps ``layer``; runs it with quantized weights via ``functional_call`` (so subclasses such as
    timm's Conv2dSame keep their own forward) after quantizing its input activation.

    Static input activations are quantized by the model's activation points (:mod:`finequant.quant.points`),
    which own every activation range; ``act_scale``/``act_zero_point`` mirror this layer's input point
    (for its int32 bias, PTQ algorithms and reports)."""

    def __init__(self, layer: nn.Module, weight_spec: QuantSpec, act_mode: ActMode = "float",
                 act_spec: QuantSpec | None = None, weight_observer: str = "minmax") -> None:
        super().__init__()
        self.layer = layer
        self.weight_spec, self.act_mode, self.act_spec = weight_spec, act_mode, act_spec
        self.weight_observer = weight_observer
        self.enabled = True  # False: run the float layer (the float reference that PTQ algorithms compare to)
        self.qat = False  # True: weights re-quantized from the live float weights every forward (STE)
        self.input_point: str | None = None  # the activation point of this layer's input (set when run)
        self.exported_as: str | None = None  # how the last ONNX export wrote this layer
        self._export_cache: tuple | None = None
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self.register_buffer("weight_scale", None)
        self.register_buffer("weight_zero_point", None)
        self.register_buffer("codebook", None)
        self._dequantized: torch.Tensor | None = None
        # Codes chosen by an algorithm rather than by rounding (AdaRound); the float weight stays as
        # the float reference. Saved artifacts store the codes, so reloading needs nothing extra.
        self.fixed_codes: torch.Tensor | None = None
        self.refresh_weight_qparams()

    # --- weights -------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_weight_qparams(self) -> None:
        """(Re)compute weight qparams from the current float weight (after BN folding, CLE, training)."""
        w, spec = self.layer.weight, self.weight_spec
        self._dequantized = self.fixed_codes = None
        if spec.is_float:
            return
        per_channel = spec.granularity != "per-tensor"
        if spec.scheme == "pow2":
            _, self.weight_scale, self.codebook = pow2_quantize(w, spec.bits, per_channel)
        elif spec.scheme == "kmeans":
            _, self.codebook = kmeans_codebook(w, spec.bits, per_channel)
        else:
            obs = OBSERVERS.get(self.weight_observer)(spec)
            obs.observe(w)
            scale, zp = obs.qparams()
            if isinstance(self.weight_scale, nn.Parameter):  # learnable (LSQ): keep the parameter object
                self.weight_scale.data.copy_(scale)
            else:
                self.weight_scale = scale
            self.weight_zero_point = zp

    def weight_codes(self) -> torch.Tensor:
        """Integer codes of the weight: affine ints, signed pow2 level indices or k-means indices."""
        w, spec = self.layer.weight.detach(), self.weight_spec
        if self.fixed_codes is not None:
            return self.fixed_codes
        if spec.scheme == "pow2":
            return pow2_quantize(w, spec.bits, spec.granularity != "per-tensor")[0]
        if spec.scheme == "kmeans":
            return kmeans_assign(w, self.codebook)
        return quantize(w, self.weight_scale.detach(), self.weight_zero_point, spec)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as quantized, for parents that read it. A parent that computes ``F.linear`` with it
        itself (torchvision's Swin) is routed back through this layer by the activation points."""
        return self.quantized_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.layer, "bias", None)

    def quantized_weight(self) -> torch.Tensor:
        w, spec = self.layer.weight, self.weight_spec
        if spec.scheme == "fp16":
            return w.half().to(w.dtype)
        if spec.scheme == "bf16":
            return w.bfloat16().to(w.dtype)
        if self.qat and spec.scheme == "affine":
            return fake_quantize(w, *qparams(*minmax_of(w, spec), spec), spec)
        if self._dequantized is None:
            codes = self.weight_codes()
            if spec.scheme == "pow2":
                self._dequantized = pow2_dequantize(codes, self.weight_scale, self.codebook)
            elif spec.scheme == "kmeans":
                self._dequantized = kmeans_dequantize(codes, self.codebook)
            else:
                self._dequantized = dequantize(codes, self.weight_scale, self.weight_zero_point, spec)
            self._dequantized = self._dequantized.to(w.dtype)
        return self._dequantized

    # --- activations ---------------------------------------------------------------------------
    @property
    def int8_kernel(self) -> bool:
        """Runs as an int8 x int8 kernel in the QDQ export (static, affine, at most 8 bits, per channel)."""
        spec = self.weight_spec
        return (self.act_mode == "static" and spec.scheme == "affine" and spec.bits <= 8
                and spec.granularity != "per-group" and not isinstance(self.layer, nn.Embedding))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_mode == "cast":
            return x.to(torch.float16 if self.weight_spec.scheme == "fp16" else torch.bfloat16).to(x.dtype)
        if self.act_mode == "dynamic":
            scale, zp = qparams(*minmax_of(x, self.act_spec), self.act_spec)
            return fake_quantize(x, scale, zp, self.act_spec)
        if self.act_mode != "static":
            return x
        watched = points.current()
        if watched is not None:
            xq = watched.points.quantize(x, f"{watched.scopes[-1][0]}:in", self.act_spec)
            tag = points.tag_of(xq)
            if tag is not None:
                self.input_point = tag[1]
                qp = watched.points.qparams_of(tag[1])
                if qp is not None:
                    self.act_scale, self.act_zero_point = qp
            return xq
        if self.act_scale is None:
            raise FinequantError("static quantization needs calibration first: pass calib_data to quantize()")
        return fake_quantize(x, self.act_scale, self.act_zero_point, self.act_spec)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled:
            return self.layer(x, *args, **kwargs)
        if not isinstance(self.layer, nn.Embedding):
            x = self.quantize_input(x)
        watched = points.current()
        if watched is not None and watched.points.mode == "calibrate":
            return self.layer(x, *args, **kwargs)
        if watched is not None and watched.points.mode.startswith("export"):
            return self._export_forward(watched.points.mode, x, *args, **kwargs)
        params = {"weight": self.quantized_weight()}
        if self.int8_kernel and self.act_scale is not None and self.bias is not None \
                and (x.dim() == 2 or not isinstance(self.layer, nn.Linear)):
            params["bias"] = self.deployed_bias()  # as the exported Conv/Gemm stores it (int32)
        return functional_call(self.layer, params, (x, *args), kwargs)

    def deployed_bias(self) -> torch.Tensor:
        """The bias rounded as the QDQ export stores it: int32 codes at scale input scale x weight scale
        (straight-through gradient, so QAT still trains it)."""
        b = self.layer.bias
        rounded = torch.clamp(torch.round(b / self._bias_scale()), -(2**31), 2**31 - 1) * self._bias_scale()
        return b + (rounded - b).detach()

    def _bias_scale(self) -> torch.Tensor:
        return (self.act_scale * self.weight_scale.detach().flatten()).to(self.layer.bias.dtype)

    @torch.no_grad()
    def export_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple | None]:
        """int8 weight codes, per-channel scales and zero points, and the int32 bias (codes, scale, zero
        point). The exporter computes them before tracing (``exporting``), so the file stores constants."""
        codes = self.weight_codes().to(torch.int8).clone()
        scale = self.weight_scale.detach().flatten().float().clone()
        if scale.numel() == 1:
            scale = scale.expand(codes.shape[0]).clone()
        zeros = torch.zeros(codes.shape[0], dtype=torch.int8)
        b = self.layer.bias
        if b is None:
            return codes, scale, zeros, None
        b_scale = self._bias_scale().detach().float().clone()
        b_codes = torch.clamp(torch.round(b.detach().double() / b_scale.double()), -(2**31), 2**31 - 1)
        return codes, scale, zeros, (b_codes.to(torch.int32), b_scale, torch.zeros_like(b_codes, dtype=torch.int32))

    def _export_forward(self, mode: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer as the QDQ ONNX file holds it (``mode`` export): int8 codes + DequantizeLinear (per output
        channel), the bias as int32 codes + DequantizeLinear for Conv/Gemm; a Linear on 3-D inputs as MatMul
        with the transposed codes (ONNX Runtime: MatMulIntegerToFloat) and a float bias Add. ``export-torch``:
        the same codes through ``dequantize_per_channel`` into the layer's own op, as pt2e's convert writes it."""
        if not self.int8_kernel:
            self.exported_as = (f"float in ONNX: {self.weight_spec.scheme}{self.weight_spec.bits}/{self.act_mode}"
                                f"{'/per-group' if self.weight_spec.granularity == 'per-group' else ''} "
                                "has no int8 QDQ form")
            return _call_with(self.layer, {"weight": self.quantized_weight()}, x, *args, **kwargs)
        codes, scale, zeros, bias_int = self._export_cache or self.export_constants()
        b = self.layer.bias
        self.exported_as = "int8 QDQ"
        bias = None if bias_int is None else points.dequantize_weight(*bias_int, 0, mode)
        if mode == "export-torch":
            w = points.dequantize_weight(codes, scale, zeros, 0, mode)
            if isinstance(self.layer, nn.Linear) and x.dim() != 2 and b is not None:
                bias = b.detach()  # float, as simulated (no int32 bias for a MatMul)
            return _call_with(self.layer, {"weight": w, "bias": bias}, x, *args, **kwargs)
        if isinstance(self.layer, nn.Linear) and x.dim() != 2:
            y = torch.matmul(x, points.dequantize_weight(codes.t().contiguous(), scale, zeros, 1, mode))
            return y if b is None else y + b.detach().clone()
        if isinstance(self.layer, nn.Linear):
            w_t = points.dequantize_weight(codes.t().contiguous(), scale, zeros, 1, mode)
            return torch.matmul(x, w_t) if bias is None else torch.addmm(bias, x, w_t)
        w = points.dequantize_weight(codes, scale, zeros, 0, mode)
        return _call_with(self.layer, {"weight": w, "bias": bias}, x, *args, **kwargs)

    # --- qparams in and out ----------------------------------------------------------------------
    def run_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer on ``x`` with ``weight`` (no input quantization)."""
        return functional_call(self.layer, {"weight": weight}, (x,))

    def qparams(self) -> LayerQParams:
        return LayerQParams(self.weight_spec, self.weight_scale, self.weight_zero_point, self.act_mode,
                            self.act_spec, self.act_scale, self.act_zero_point, self.codebook)

    @torch.no_grad()
    def load_qparams(self, q: LayerQParams) -> None:
        self.weight_spec, self.act_mode, self.act_spec = q.weight_spec, q.act_mode, q.act_spec
        self.weight_scale, self.weight_zero_point, self.codebook = q.weight_scale, q.weight_zero_point, q.codebook
        self.act_scale, self.act_zero_point = q.act_scale, q.act_zero_point
        self._dequantized = None

    def extra_repr(self) -> str:
        s = self.weight_spec
        return f"weights={s.scheme}{'' if s.is_float else s.bits}/{s.granularity}, acts={self.act_mode}"


def _call_with(layer: nn.Module, tensors: dict[str, torch.Tensor | None], *args: Any, **kwargs: Any) -> Any:
    """``layer(*args)`` with some parameters replaced by tensors. ``functional_call`` does this, but refuses
    to run under the tracer that the ONNX export uses."""
    saved = {k: layer._parameters.pop(k) for k in tensors}
    try:
        for k, t in tensors.items():
            setattr(layer, k, t)
        return layer(*args, **kwargs)
    finally:
        for k, p in saved.items():
            delattr(layer, k)
            layer._parameters[k] = p
