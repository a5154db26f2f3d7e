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

from finequant.quant.affine import dequantize, fake_quantize, minmax_of, qparams, quantize
from finequant.quant.nonlinear import kmeans_assign, kmeans_codebook, kmeans_dequantize, pow2_dequantize, \
    pow2_quantize
from finequant.quant.observers import OBSERVERS, Observer
from finequant.quant.spec import QuantSpec

# One source of truth for what can be quantized: layers with a weight that a kernel multiplies.
# (nn.LSTM is rewritten into Linear gate projections first: see quant/lstm.py.)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
ActMode = Literal["static", "dynamic", "float", "cast"]
DEPLOYED_OUTPUT = QuantSpec(bits=8, symmetric=False, signed=False)  # uint8, as QuantizeLinear in the QDQ export


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
    out_scale: torch.Tensor | None = None
    out_zero_point: torch.Tensor | None = None
    deployed_out_scale: torch.Tensor | None = None
    deployed_out_zero_point: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        def t(x: torch.Tensor | None) -> Any:
            return None if x is None else x.detach().cpu().flatten().tolist()

        return {"weight_spec": self.weight_spec.__dict__, "weight_scale": t(self.weight_scale),
                "weight_zero_point": t(self.weight_zero_point), "act_mode": self.act_mode,
                "act_spec": None if self.act_spec is None else self.act_spec.__dict__,
                "act_scale": t(self.act_scale), "act_zero_point": t(self.act_zero_point),
                "codebook": t(self.codebook), "out_scale": t(self.out_scale),
                "out_zero_point": t(self.out_zero_point), "deployed_out_scale": t(self.deployed_out_scale),
                "deployed_out_zero_point": t(self.deployed_out_zero_point)}


class QuantLayer(nn.Module):
    """Wraps ``layer``; runs it with quantized weights via ``functional_call`` (so subclasses such as
    timm's Conv2dSame keep their own forward) after quantizing its input activation."""

    def __init__(self, layer: nn.Module, weight_spec: QuantSpec, act_mode: ActMode = "float",
                 act_spec: QuantSpec | None = None, observer: str = "minmax", weight_observer: str = "minmax",
                 seed: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.weight_spec, self.act_mode, self.act_spec = weight_spec, act_mode, act_spec
        self.weight_observer = weight_observer
        self.observer: Observer | None = OBSERVERS.get(observer)(act_spec, seed) if act_mode == "static" else None
        # Output ranges: ONNX export quantizes a Conv's output with them where no quantized layer consumes
        # it directly (e.g. before a residual Add), as ORT needs a QuantizeLinear after a Conv to run it as
        # QLinearConv; the simulation then quantizes the same output (deployed_out_*), so what it
        # computes is what the exported file computes.
        self.output_observer: Observer | None = (OBSERVERS.get("minmax")(act_spec, seed)
                                                 if act_mode == "static" else None)
        self.calibrating = False
        self.enabled = True  # False: run the float layer (the float reference that PTQ algorithms compare to)
        self.qat = False  # True: weights re-quantized from the live float weights every forward (STE)
        self.observe_in_training = False  # QAT: activation ranges keep following the data until frozen
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self.register_buffer("out_scale", None)
        self.register_buffer("out_zero_point", None)
        self.register_buffer("deployed_out_scale", None)
        self.register_buffer("deployed_out_zero_point", None)
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
        """The weight as quantized, for parents that read it (e.g. torch's encoder-layer fast-path checks).
        Layers whose parent computes with the weight itself are never wrapped (see ``prepare``)."""
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
    def finish_calibration(self) -> None:
        if self.observer is None or not self.observer.observed:
            return
        self.act_scale, self.act_zero_point = self.observer.qparams()
        self.out_scale, self.out_zero_point = self.output_observer.qparams()
        self.calibrating = False

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_mode == "cast":
            return x.to(torch.float16 if self.weight_spec.scheme == "fp16" else torch.bfloat16).to(x.dtype)
        if self.act_mode == "dynamic":
            scale, zp = qparams(*minmax_of(x, self.act_spec), self.act_spec)
            return fake_quantize(x, scale, zp, self.act_spec)
        if self.act_mode == "static":
            if self.act_scale is None:
                from finequant.errors import FinequantError

                raise FinequantError("static quantization needs calibration first: pass calib_data to quantize()")
            return fake_quantize(x, self.act_scale, self.act_zero_point, self.act_spec)
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled:
            return self.layer(x, *args, **kwargs)
        if self.calibrating:
            self.observer.observe(x)
            y = self.layer(x, *args, **kwargs)
            self.output_observer.observe(y)
            return y
        if self.training and self.observe_in_training and self.observer is not None:
            self.observer.observe(x)
            self.act_scale, self.act_zero_point = self.observer.qparams()
        if not isinstance(self.layer, nn.Embedding):
            x = self.quantize_input(x)
        params = {"weight": self.quantized_weight()}
        spec = self.weight_spec
        if (isinstance(self.layer, (nn.Conv1d, nn.Conv2d)) or x.dim() == 2) and self.act_mode == "static" \
                and self.act_scale is not None and self.bias is not None and spec.scheme == "affine" \
                and spec.bits <= 8 and spec.granularity != "per-group":
            params["bias"] = self.deployed_bias()  # as the exported Conv/Gemm stores it (int32)
        y = functional_call(self.layer, params, (x, *args), kwargs)
        if self.deployed_out_scale is not None:
            y = fake_quantize(y, self.deployed_out_scale, self.deployed_out_zero_point, DEPLOYED_OUTPUT)
        return y

    def deployed_bias(self) -> torch.Tensor:
        """The bias rounded as the QDQ export stores it: int32 codes at scale input scale x weight scale
        (straight-through gradient, so QAT still trains it)."""
        b = self.layer.bias
        scale = (self.act_scale * self.weight_scale.detach().flatten()).to(b.dtype)
        rounded = torch.clamp(torch.round(b / scale), -(2**31), 2**31 - 1) * scale
        return b + (rounded - b).detach()

    def set_deployed_output(self, point: tuple[float, int] | None) -> None:
        """Quantize this layer's output to uint8 with (scale, zero point), as the exported graph does."""
        self.deployed_out_scale = None if point is None else torch.tensor(point[0], dtype=torch.float32)
        self.deployed_out_zero_point = None if point is None else torch.tensor(point[1], dtype=torch.int32)

    # --- qparams in and out ----------------------------------------------------------------------
    def run_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer on ``x`` with ``weight`` (no input quantization)."""
        return functional_call(self.layer, {"weight": weight}, (x,))

    def qparams(self) -> LayerQParams:
        return LayerQParams(self.weight_spec, self.weight_scale, self.weight_zero_point, self.act_mode,
                            self.act_spec, self.act_scale, self.act_zero_point, self.codebook,
                            self.out_scale, self.out_zero_point, self.deployed_out_scale,
                            self.deployed_out_zero_point)

    @torch.no_grad()
    def load_qparams(self, q: LayerQParams) -> None:
        self.weight_spec, self.act_mode, self.act_spec = q.weight_spec, q.act_mode, q.act_spec
        self.weight_scale, self.weight_zero_point, self.codebook = q.weight_scale, q.weight_zero_point, q.codebook
        self.act_scale, self.act_zero_point = q.act_scale, q.act_zero_point
        self.out_scale, self.out_zero_point = q.out_scale, q.out_zero_point
        self.deployed_out_scale, self.deployed_out_zero_point = q.deployed_out_scale, q.deployed_out_zero_point
        self._dequantized = None

    def extra_repr(self) -> str:
        s = self.weight_spec
        return f"weights={s.scheme}{'' if s.is_float else s.bits}/{s.granularity}, acts={self.act_mode}"
