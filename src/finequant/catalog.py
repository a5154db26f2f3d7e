"""What finequant can do: every registry, by name, with what each entry needs and offers.

This module imports nothing heavy: the CLI builds its help and the configs validate names and
combinations from here, and each implementation is imported on first use. Adding a method, an
observer, a PTQ step, a strategy, a backend or an exporter is its implementation plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from finequant.registry import Registry


@dataclass(frozen=True)
class MethodInfo:
    """What a quantization method needs and how it ships."""

    calibrated: bool = False
    """Static activation ranges: needs calibration data and uses the activation ``observer``."""
    trained: bool = False
    """Needs a training loop (QAT): ``quantize`` needs ``train_data``."""
    activations: bool = False
    """Quantizes activations (``act_bits`` matters)."""
    schemes: tuple[str, ...] = ("affine",)
    """Weight schemes it accepts; the first is its default."""
    exporter: str | None = None
    """The EXPORTERS entry that ships it as ONNX on integer kernels (None: no ONNX int8 form)."""
    torch_kernels: bool = False
    """The eager ``torch`` backend runs it on real low-precision kernels (not only simulated)."""


@dataclass(frozen=True)
class ObserverInfo:
    weights: bool = False
    """Also usable as the weight-range rule (``weight_observer``)."""


@dataclass(frozen=True)
class PTQInfo:
    before_calibration: bool
    """Changes float weights, so activation ranges are calibrated after it."""
    order: int
    """Steps run in this order whatever order the config lists them in."""


@dataclass(frozen=True)
class BackendInfo:
    quantized: str
    """Which quantized models it runs: ``all`` (simulation), ``exporter`` (methods with an integer ONNX
    form), ``torch_kernels`` (methods PyTorch runs on real low-precision kernels), ``calibrated`` (static
    activation ranges)."""

    int8_ops: tuple[str, ...] | None = None
    """The kinds of activation ops (``QuantConfig.int8_ops``) worth running int8 for this runtime when the
    model is made for it (``QuantConfig.runtime``); None: every kind finequant can place."""

    epilogues: bool = False
    """Its int8 kernels run post-ops (activation, residual Add) before quantizing their output and can write
    float: a model made for it places its points so (``ActivationPoints.epilogues``)."""

    def runs(self, method: MethodInfo) -> bool:
        return self.quantized == "all" or bool(getattr(method, self.quantized))


@dataclass(frozen=True)
class ExporterInfo:
    suffix: str
    """File suffix of what it writes."""
    task: str = "any"
    """``image``, ``text`` or ``any``: the inputs it can trace."""


METHODS: Registry = Registry("quantization method")
_M = "finequant.quant.methods:"
METHODS.register_lazy("static", _M + "static", "W8A8: calibrated activation ranges, per-channel int8 weights",
                      MethodInfo(calibrated=True, activations=True, exporter="onnx-qdq"))
METHODS.register_lazy("qat", _M + "qat", "quantization-aware training: static W/A fake quant trained with STE",
                      MethodInfo(calibrated=True, trained=True, activations=True, exporter="onnx-qdq"))
METHODS.register_lazy("dynamic", _M + "dynamic",
                      "int8 weights, activation ranges measured per batch at run time (Linear)",
                      MethodInfo(activations=True, exporter="onnx-dynamic", torch_kernels=True))
METHODS.register_lazy("weight-only", _M + "weight_only",
                      "quantized weights (int8, or int4 per-group), float activations", MethodInfo())
METHODS.register_lazy("fp16", _M + "fp16", "half-precision weights and activations",
                      MethodInfo(schemes=("fp16",), torch_kernels=True))
METHODS.register_lazy("bf16", _M + "bf16", "bfloat16 weights and activations",
                      MethodInfo(schemes=("bf16",), torch_kernels=True))
METHODS.register_lazy("nonlinear", _M + "nonlinear",
                      "power-of-two (log) or k-means codebook weights, float activations",
                      MethodInfo(schemes=("pow2", "kmeans")))

OBSERVERS: Registry = Registry("observer")
_O = "finequant.quant.observers:"
OBSERVERS.register_lazy("minmax", _O + "MinMaxObserver", "running min and max (exact range, sensitive to outliers)",
                        ObserverInfo(weights=True))
OBSERVERS.register_lazy("moving-average", _O + "MovingAverageObserver",
                        "exponential moving average of per-batch min and max", ObserverInfo())
OBSERVERS.register_lazy("percentile", _O + "PercentileObserver",
                        "clip to the 99.99th percentile of |x| (or of each tail if asymmetric)", ObserverInfo())
OBSERVERS.register_lazy("mse", _O + "MSEObserver", "clipping range that minimizes the mean squared quantization error",
                        ObserverInfo(weights=True))
OBSERVERS.register_lazy("entropy", _O + "EntropyObserver",
                        "TensorRT-style KL-divergence threshold on a 2048-bin histogram of |x|", ObserverInfo())

PTQ_STEPS: Registry = Registry("post-training quantization step")
_P = "finequant.quant.ptq.steps:"
PTQ_STEPS.register_lazy("cle", _P + "cle", "cross-layer equalization of consecutive layers (helps per-tensor, "
                        "depthwise nets)", PTQInfo(before_calibration=True, order=0))
PTQ_STEPS.register_lazy("adaround", _P + "adaround_step", "learned rounding of weights, layer by layer (for 4-bit "
                        "weights)", PTQInfo(before_calibration=False, order=1))
PTQ_STEPS.register_lazy("bias-correction", _P + "bias_correction_step",
                        "empirical correction of the output-mean shift quantization causes",
                        PTQInfo(before_calibration=False, order=2))

STRATEGIES: Registry = Registry("fine-tuning strategy")
_S = "finequant.train.strategies:"
STRATEGIES.register_lazy("full", _S + "full", "train every parameter (body at lr/lr_mult)")
STRATEGIES.register_lazy("last-layer", _S + "last_layer",
                         "fit only the new head, to convergence on cached features (L-BFGS, L2 chosen on val)")
STRATEGIES.register_lazy("partial", _S + "partial",
                         "freeze the first freeze_blocks blocks and/or names matching freeze_patterns")
STRATEGIES.register_lazy("gradual", _S + "gradual", "head first, then unfreeze blocks from the top each epoch "
                         "(ULMFiT)")
STRATEGIES.register_lazy("lp-ft", _S + "lp_ft", "linear probe (head only), then fine-tune all at a lower LR (default)")

BACKENDS: Registry = Registry("backend")
_B = "finequant.runtime.backends:"
BACKENDS.register_lazy("torch-sim", _B + "torch_sim", "finequant's fake-quant simulation in PyTorch (the accuracy "
                       "reference)", BackendInfo("all"))
BACKENDS.register_lazy("torch", _B + "torch_eager",
                       "eager PyTorch: fp32, real fp16/bf16 weights, or dynamic int8 Linear kernels",
                       BackendInfo("torch_kernels"))
BACKENDS.register_lazy("onnxruntime", _B + "onnxruntime", "ONNX Runtime CPU: QDQ int8 (QLinearConv...), integer "
                       "MatMuls, or fp32", BackendInfo("exporter"))
# Inductor runs quantize/dequantize around a float op as one fused loop, and has no int8 kernel for the
# squeeze-excitation Mul, sigmoids or attention products: points there only add work
BACKENDS.register_lazy("torch-inductor", _B + "torch_inductor", "PyTorch-native int8: torch.export + "
                       "torch.compile, Inductor's oneDNN int8 kernels, finequant's own qparams (pt2e form)",
                       BackendInfo("calibrated", int8_ops=("add", "pool", "concat"), epilogues=True))
# OpenVINO fuses depthwise convolutions with their activation and the squeeze-excitation gate itself: int8 points
# on the gates (QLinearMul for ORT) become FakeQuantize nodes that block those fusions (MobileNetV3-large: 6.20 vs
# 3.96 ms at batch 1 with only Add/Concat/MatMul points; ResNet-50 needs its residual Add points: 27.1 vs 24.4 ms).
# Its int8 convolutions are faster without activation zero points (symmetric int8 where a tensor has negative values,
# as NNCF's default preset quantizes: MobileNetV3-large, AVX2, 3.02 vs 3.49 ms at batch 1, 40.2 vs 45.9 at 16), but
# then it computes a Concat feeding a convolution far from both the simulation and fp32 (70-79% relative error on
# a probe, also with one quantizer shared by the Concat's inputs as NNCF places it; 17% on tests/test_points.py's
# block; asymmetric uint8: 0.3%), so finequant keeps zero points there
BACKENDS.register_lazy("openvino", _B + "openvino",
                       "OpenVINO CPU plugin reading the same ONNX (pip install 'finequant[openvino]')",
                       BackendInfo("exporter", int8_ops=("add", "concat", "matmul")))

EXPORTERS: Registry = Registry("exporter")
_E = "finequant.runtime.exporters:"
EXPORTERS.register_lazy("onnx-fp32", _E + "onnx_fp32", "float ONNX (dynamic batch)", ExporterInfo(".onnx"))
EXPORTERS.register_lazy("onnx-qdq", _E + "onnx_qdq", "QDQ int8 ONNX with finequant's codes (QLinearConv/MatMul)",
                        ExporterInfo(".onnx", task="image"))
EXPORTERS.register_lazy("onnx-dynamic", _E + "onnx_dynamic",
                        "dynamic int8 ONNX: DynamicQuantizeLinear -> MatMulInteger with finequant's codes",
                        ExporterInfo(".onnx"))
EXPORTERS.register_lazy("pt2", _E + "pt2", "torch.export program (.pt2) of the float or fake-quant model",
                        ExporterInfo(".pt2", task="image"))

AUGMENTATIONS = ("none", "light", "standard")
"""Image augmentation presets (see :mod:`finequant.data.transforms`)."""
