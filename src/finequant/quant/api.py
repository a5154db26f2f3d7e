"""The one-call API: ``quantize``, ``qparams_from_model`` and ``quantize_inference``."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finequant.catalog import BACKENDS
from finequant.errors import ConfigError, FinequantError
from finequant.models.base import LoadedModel, forward
from finequant.quant.config import QATConfig, QuantConfig
from finequant.quant.ptq.equalize import ChannelClip
from finequant.quant.fold import fold_batchnorm
from finequant.quant.attention import split_attention
from finequant.quant.lstm import split_lstms
from finequant.quant.methods import METHODS
from finequant.quant.ptq.common import float_reference
from finequant.quant.ptq.steps import ordered
from finequant.quant.methods import act_spec
from finequant.quant.modules import SUPPORTED_LAYERS, LayerQParams, QuantLayer
from finequant.quant.points import OP_KINDS, ActivationPoints, attach, points_of
from finequant.quant.spec import QuantSpec

log = logging.getLogger(__name__)


@dataclass
class QuantizedModel:
    """The quantized copy of a model plus a record of every layer's fate (quantized or float, and why)."""

    model: nn.Module
    config: QuantConfig
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    ptq_report: dict[str, Any] = field(default_factory=dict)

    @property
    def rewrites(self) -> dict[str, int]:
        """ReLU6 modules that CLE turned into ``ChannelClip`` (name -> channels), read off the model."""
        return {n: int(m.high.numel()) for n, m in self.model.named_modules() if isinstance(m, ChannelClip)}

    def quant_layers(self) -> dict[str, QuantLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantLayer)}

    @property
    def points(self) -> ActivationPoints | None:
        """The activation quantization points (static methods), see :mod:`finequant.quant.points`."""
        return points_of(self.model)

    @contextlib.contextmanager
    def tracing(self, mode: str) -> Iterator[dict[str, QuantLayer]]:
        """The model in an export mode of its activation points (``export``: ONNX Q/DQ; ``export-torch``: pt2e's
        quantize/dequantize form), each int8 layer's constants computed once for the trace; yields the layers."""
        layers = self.quant_layers()
        for layer in layers.values():
            layer._export_cache = layer.export_constants() if layer.int8_kernel else None
        try:
            with self.points.mode_as(mode):
                yield layers
        finally:
            for layer in layers.values():
                layer._export_cache = None

    def qparams(self) -> QParams:
        return QParams({n: m.qparams() for n, m in self.quant_layers().items()}, folded=list(self.folded),
                       rewrites=self.rewrites, points=None if self.points is None else self.points.state())

    def float_layers(self) -> dict[str, str]:
        return {n: r["reason"] for n, r in self.layers.items() if r["status"] == "float"}

    def packed_weight_bytes(self) -> int:
        """Bytes of all parameters as deployed: quantized weights packed at their bit width (+ qparams,
        codebooks), everything else in float32."""
        total = 0
        quant_weights = set()
        for name, q in self.quant_layers().items():
            w = q.layer.weight
            quant_weights.add(id(w))
            total += math.ceil(w.numel() * q.weight_spec.bits / 8)
            for t in (q.weight_scale, q.codebook):
                total += 0 if t is None else t.numel() * 4
        total += sum(p.numel() * p.element_size() for p in self.model.parameters() if id(p) not in quant_weights)
        return total


class QParams(dict):
    """Per-layer qparams (``name -> LayerQParams``) plus the BN folds and ReLU6 rewrites they assume.

    Steps that change float weights (CLE, AdaRound, bias correction) need those weights too: save
    the model with :func:`finequant.quant.artifact.save_quantized`, not qparams alone."""

    def __init__(self, layers: dict[str, LayerQParams], folded: list[tuple[str, str]],
                 rewrites: dict[str, int] | None = None,
                 points: dict[str, tuple[float, int]] | None = None) -> None:
        super().__init__(layers)
        self.folded = folded
        self.rewrites = rewrites or {}
        self.points = points  # activation points of static methods: key -> (scale, zero point)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {n: q.to_dict() for n, q in self.items()}, "folded": self.folded,
                "rewrites": self.rewrites, "points": self.points}


def _module(model: nn.Module | LoadedModel) -> nn.Module:
    return model.model if isinstance(model, LoadedModel) else model


def _batches(calib_data: Iterable | None, n: int) -> list[Any]:
    """Up to ``n`` model inputs from an iterable of inputs or (inputs, labels) pairs."""
    if calib_data is None:
        return []
    out = []
    for batch in calib_data:
        if len(out) >= n:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for t in (x.values() if isinstance(x, dict) else [x]):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FinequantError(f"calibration batch {len(out)} holds NaN/Inf values; activation ranges "
                                     "would be NaN and so would every output: clean the data first")
        out.append(x)
    return out


def _float_reason(module: nn.Module) -> str:
    if isinstance(module, _BatchNorm):
        return "BatchNorm not fed directly by a conv (not foldable); kept in float"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return "normalization layer: negligible compute, kept in float for accuracy"
    if isinstance(module, nn.LSTM):
        return "LSTM with proj_size is not supported; kept in float"
    if isinstance(module, nn.MultiheadAttention):
        return ("nn.MultiheadAttention with separate key/value sizes or extra key/value biases multiplies by its "
                "own weights; kept in float")
    return f"{type(module).__name__} has no quantized kernel in finequant; kept in float"


def prepare(model: nn.Module | LoadedModel, config: QuantConfig, example: Any = None,
            folded: list[tuple[str, str]] | None = None, rewrites: dict[str, int] | None = None) -> QuantizedModel:
    """Copy the model, fold BatchNorm, and wrap every supported layer per the method (no calibration).

    ``folded``/``rewrites`` replay an earlier quantization's BN folds and CLE's ReLU6 -> ChannelClip."""
    net = copy.deepcopy(_module(model)).eval()
    if isinstance(net, (*SUPPORTED_LAYERS, nn.LSTM)):  # a bare layer: give it a parent so it can be wrapped
        net = nn.Sequential(net)
    reparameterize(net)
    fold_layer_scale(net)
    pairs: list[tuple[str, str]] = []
    if config.fold_bn and not config.info.trained and any(isinstance(m, _BatchNorm) for m in net.modules()):
        if folded is not None or example is not None:
            pairs = fold_batchnorm(net, example, pairs=folded)
        else:
            log.warning("no example input: BatchNorm layers are not folded before quantization")
    for name, channels in (rewrites or {}).items():
        net.set_submodule(name, ChannelClip(channels))  # its bounds come with the saved float tensors
    split_lstms(net)  # gate projections become Linear layers, quantized like any other
    split_attention(net)  # nn.MultiheadAttention's packed projections become Linear layers too
    for m in net.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            # torch's fused encoder fast path computes with the float weights and never calls the
            # (quantized) linear layers; this flag is one of its preconditions and not used otherwise
            m.activation_relu_or_gelu = False
    method = METHODS.get(config.method)
    layers: dict[str, dict[str, Any]] = {}
    for name, module in list(net.named_modules()):
        if not name or isinstance(module, QuantLayer) or any(isinstance(m, QuantLayer) for m in _parents(net, name)):
            continue
        if isinstance(module, SUPPORTED_LAYERS):
            cfg = config.for_layer(name)
            plan = "left in float by skip/overrides" if cfg is None else method(module, cfg)
            if isinstance(plan, str):
                layers[name] = {"type": type(module).__name__, "status": "float", "reason": plan}
                continue
            net.set_submodule(name, QuantLayer(module, plan.weight_spec, plan.act_mode, plan.act_spec,
                                               cfg.weight_observer))
            layers[name] = {"type": type(module).__name__, "status": "quantized",
                            "weights": f"{plan.weight_spec.scheme}{plan.weight_spec.bits}",
                            "granularity": plan.weight_spec.granularity, "activations": plan.act_mode}
        elif any(True for _ in module.parameters(recurse=False)):
            layers[name] = {"type": type(module).__name__, "status": "float", "reason": _float_reason(module)}
    if any(m.act_mode == "static" for m in net.modules() if isinstance(m, QuantLayer)):
        attach(net, activation_points(config, act_spec(config)))
    for name in _uncalled_layers(net, example):
        net.set_submodule(name, net.get_submodule(name).layer)
        layers[name] = {**layers[name], "status": "float", "reason": (
            "its parent computes with the weight itself (a fused kernel), never calling the layer; kept in float")}
    return QuantizedModel(net, config, layers, pairs)


def activation_points(config: QuantConfig, spec: QuantSpec) -> ActivationPoints:
    """A static model's activation points, placed for the runtime it is made for: the kinds of activation ops
    it runs int8 are the config's, else those that pay on that runtime (see docs/coverage.md)."""
    backend = BACKENDS.info(config.runtime)
    ops = tuple(config.int8_ops) if config.int8_ops is not None else backend.int8_ops or OP_KINDS
    return ActivationPoints(spec, config.observer, config.seed, ops, backend.epilogues)


def reparameterize(net: nn.Module) -> bool:
    """Fuse re-parameterizable blocks (RepVGG, MobileOne, FastViT...) for inference, in place, with timm's own
    ``reparameterize_model`` (each block's ``fuse``/``reparameterize``): exact in eval, and one convolution
    per block instead of three branches and their BatchNorms. Returns whether anything was fused."""
    names = ("fuse", "reparameterize", "switch_to_deploy")
    if not any(type(m).__module__.startswith("timm.") and any(hasattr(m, n) for n in names) for m in net.modules()):
        return False
    from timm.models._manipulate import reparameterize_model

    reparameterize_model(net, inplace=True)
    return True


@torch.no_grad()
def fold_layer_scale(net: nn.Module) -> int:
    """Fold timm ConvNeXt blocks' layer scale (``x * gamma`` after the MLP) into the MLP's last layer, in place:
    exact, and the int8 graph has no per-channel Mul between that layer and the residual Add (ONNX Runtime
    folds it into the Conv in float, but not across a quantization point: a QLinearMul per block was 5% of
    ConvNeXt-atto's time). Returns how many blocks were folded."""
    if not any(type(m).__module__ == "timm.models.convnext" for m in net.modules()):
        return 0
    from timm.models.convnext import ConvNeXtBlock

    done = 0
    for block in net.modules():
        fc2 = getattr(getattr(block, "mlp", None), "fc2", None)
        if isinstance(block, ConvNeXtBlock) and block.gamma is not None and isinstance(fc2, (nn.Linear, nn.Conv2d)):
            gamma = block.gamma.detach()
            fc2.weight.mul_(gamma.reshape(-1, *[1] * (fc2.weight.dim() - 1)))
            if fc2.bias is not None:
                fc2.bias.mul_(gamma)
            block.gamma = None
            done += 1
    return done


def _uncalled_layers(net: nn.Module, example: Any) -> list[str]:
    """Wrapped layers that a forward pass on ``example`` never runs: their parent computes with the weight
    itself in a way the activation points cannot route back (a fused kernel), so the wrapper would be
    bypassed. Without an example, the layers inside nn.MultiheadAttention."""
    layers = {n: m for n, m in net.named_modules() if isinstance(m, QuantLayer)}
    if example is None:
        return [n for n in layers if any(isinstance(m, nn.MultiheadAttention) for m in _parents(net, n))]
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: called.add(n)) for n, m in layers.items()]
    try:
        with float_reference(net):
            forward(net, example)
    finally:
        for h in hooks:
            h.remove()
    return [n for n in layers if n not in called]


def _parents(net: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [net.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


@torch.no_grad()
def calibrate(qm: QuantizedModel, batches: list[Any]) -> int:
    """Run calibration batches through the model: its activation points record ranges, then freeze them."""
    points = qm.points
    if points is None:
        return 0
    if not batches:
        raise FinequantError(f"method '{qm.config.method}' needs calibration data: pass calib_data "
                             f"(e.g. a DataLoader of the train split; {qm.config.calib_batches} batches are used)")
    qm.model.eval()
    with points.mode_as("calibrate"):
        for inputs in batches:
            forward(qm.model, inputs)
    points.finish_calibration()
    unseen = [n for n, m in qm.quant_layers().items() if m.act_mode == "static" and m.input_point is None]
    if unseen:
        raise FinequantError(f"calibration never reached layer(s) {unseen[:5]}; is the calibration data the "
                             "kind of input the model takes?")
    for m in qm.quant_layers().values():
        if m.input_point is not None:
            m.act_scale, m.act_zero_point = points.qparams_of(m.input_point)
    return len(batches)


def quantize(model: nn.Module | LoadedModel, config: QuantConfig | None = None,
             calib_data: Iterable | None = None, *, train_data: Any = None, qat: QATConfig | None = None
             ) -> QuantizedModel:
    """Quantize a copy of ``model`` per ``config`` (default: static W8A8), calibrating on ``calib_data``.

    A method that trains (``qat``) also needs ``train_data`` (a :class:`finequant.data.Splits`) and
    takes its schedule from ``qat``.
    """
    config = config or QuantConfig()
    if config.info.trained:
        if train_data is None or not isinstance(model, LoadedModel):
            raise ConfigError(f"method '{config.method}' trains the quantized model: call quantize(loaded_model, "
                              "config, calib_data, train_data=splits, qat=QATConfig(...)) with the model from "
                              "load_model() and the train/val splits")
        from finequant.quant.qat import quantization_aware_training

        return quantization_aware_training(model, train_data, config, qat or QATConfig(), calib_data)[0]
    batches = _batches(calib_data, config.calib_batches)
    example = batches[0] if batches else _synthetic_example(model)
    qm = prepare(model, config, example)
    steps = ordered(config.ptq)
    for name, step, info in steps:
        if info.before_calibration:
            qm.ptq_report[name] = step(qm.model, batches, config)
    n = calibrate(qm, batches)
    if len(batches) < config.calib_batches and n:
        log.warning("calibrated on %d batch(es), fewer than calib_batches=%d", len(batches), config.calib_batches)
    for name, step, info in steps:
        if not info.before_calibration:
            qm.ptq_report[name] = step(qm.model, batches, config)
    return qm


def _synthetic_example(model: nn.Module | LoadedModel) -> Any:
    """An input of the model's kind when no data is given: a random image of its size, or a tokenized sentence;
    enough to find conv->BN pairs and the layers a parent computes with itself."""
    if isinstance(model, LoadedModel) and model.task == "image":
        s = model.preprocess.input_size
        return torch.randn(1, 3, s, s)
    if isinstance(model, LoadedModel) and model.tokenizer is not None:
        return dict(model.tokenizer(["an example sentence to trace the model with"], return_tensors="pt"))
    return None


def qparams_from_model(model: nn.Module | LoadedModel, calib_data: Iterable | None = None,
                       config: QuantConfig | None = None) -> QParams:
    """Per-layer qparams (scale, zero point, bits, granularity) for ``model``.

    With ``calib_data`` every layer gets int8 weights and calibrated static activation ranges (W8A8).
    Without it, a model of only Linear/Embedding layers gets dynamic int8 (activation ranges measured
    per batch at run time); a model with convolutions, whose activations need calibrated ranges,
    gets int8 weights with float activations on every layer, and a warning says so.
    """
    if config is None:
        if calib_data is not None:
            config = QuantConfig(method="static")
        elif any(isinstance(m, nn.modules.conv._ConvNd) for m in _module(model).modules()):
            log.warning("qparams_from_model: no calib_data, so activations stay float (weight-only int8 on "
                        "every layer); pass calib_data=[a few input batches] for static W8A8")
            config = QuantConfig(method="weight-only")
        else:
            config = QuantConfig(method="dynamic")
    return quantize(model, config, calib_data).qparams()


def quantize_inference(model: nn.Module | LoadedModel, qparams: QParams,
                       config: QuantConfig | None = None) -> nn.Module:
    """A copy of ``model`` ready for inference with exactly these qparams (BN folded as they assume)."""
    config = config or QuantConfig(method="weight-only")
    example = _synthetic_example(model)
    qm = prepare(model, config, example, folded=qparams.folded, rewrites=qparams.rewrites)
    missing = set(qparams) - set(qm.quant_layers())
    for name in missing:
        module = qm.model.get_submodule(name)
        q = qparams[name]
        qm.model.set_submodule(name, QuantLayer(module, q.weight_spec))
    for name, layer in qm.quant_layers().items():
        if name in qparams:
            layer.load_qparams(qparams[name])
        else:  # layers without qparams stay float: unwrap
            qm.model.set_submodule(name, layer.layer)
    static = [q for q in qparams.values() if q.act_mode == "static"]
    if static:
        if qparams.points is None:
            raise FinequantError("these qparams quantize activations statically but carry no activation points "
                                 "(made by an older finequant?): quantize the model again")
        points = points_of(qm.model) or attach(qm.model, activation_points(config, static[0].act_spec))
        points.load_state(qparams.points)
    return qm.model.eval()
