"""Activation quantization points: where a statically quantized model rounds its activations, on tensors.

ONNX Runtime runs an operator on integers only where every input arrives through a DequantizeLinear and its
output leaves through a QuantizeLinear; wherever a float tensor sits between two int8 kernels it converts
back and forth (and, for convolutions, transposes between NHWC and NCHW). So the points that decide both
speed and accuracy are on *tensors*: the outputs of convolutions, residual Adds, squeeze-excitation Muls,
pooling, Concats, attention's Q, K, softmax and V. Most of them are functional code inside a module's
forward (``out += identity``, ``x * self.gate(s)``), which module hooks cannot reach, so a
``TorchFunctionMode`` watches every torch op of the forward pass and applies the rules in :data:`RULES`.

The same rules run in every mode, so that what ships is what was calibrated and measured: ``calibrate``
observes the tensors that will be quantized, ``simulate`` fake-quantizes them, ``export`` emits
QuantizeLinear/DequantizeLinear nodes at exactly those tensors while ``torch.onnx.export`` traces the model,
and ``export-torch`` emits PyTorch's ``quantized_decomposed`` quantize/dequantize ops (the pt2e reference
form, which Inductor lowers to int8 kernels) while ``torch.export`` traces it. ``float`` runs the float
reference (PTQ algorithms compare to it).

A tensor's point is keyed by the op that produced it (module path, op name, its index in that module's
call), so every consumer of one tensor shares one QuantizeLinear, as ONNX Runtime's fused kernels need.
Tensor states: ``pending`` (an int8 kernel's output, quantized at its first consumer unless a Relu/Clip
folds into it first), ``quantized`` (on its grid already: a view, MaxPool or pad of a quantized tensor)
and ``float``. torch.ao's FX/pt2e quantizers do this on a captured graph; finequant stays eager because
captures fail on many zoo models (data-dependent shapes in Swin, timm's dynamic padding) and the
TorchScript ONNX exporter needs an eager model.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from finequant.errors import FinequantError
from finequant.quant.affine import fake_quantize
from finequant.quant.config import OP_KINDS
from finequant.quant.observers import OBSERVERS, Observer
from finequant.quant.spec import QuantSpec

PENDING, QUANTIZED, FLOAT = "pending", "quantized", "float"
MODES = ("calibrate", "simulate", "export", "export-torch", "float")
_TAG, _CACHE, _SEEN = "_fq_tag", "_fq_quantized", "_fq_observed"


class Point:
    """One quantized tensor: an observer while calibrating, then its (scale, zero point)."""

    def __init__(self, spec: QuantSpec, observer: Observer | None) -> None:
        self.spec, self.observer = spec, observer
        self.scale: torch.Tensor | None = None
        self.zero_point: torch.Tensor | None = None

    def finish(self) -> None:
        if self.observer is not None and self.observer.observed:
            self.scale, self.zero_point = self.observer.qparams()

    def set(self, scale: float | torch.Tensor, zero_point: int | torch.Tensor) -> None:
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(())
        self.zero_point = torch.as_tensor(zero_point, dtype=torch.int32).reshape(())


class _QDQ(torch.autograd.Function):
    """Fake quantization that the ONNX exporter writes as QuantizeLinear -> DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
        # clamp(round(x/s) + z, qmin, qmax) - z, written without an add of a constant 0 (the TorchScript
        # exporter's peephole pass removes such a node from the recorded block and then fails)
        return torch.clamp(torch.round(x / scale), qmin - zero_point, qmax - zero_point) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float, zero_point: int, qmin: int, qmax: int) -> Any:
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.uint8 if qmin >= 0 else torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class DequantizeWeight(torch.autograd.Function):
    """Integer codes times per-channel scales, written to ONNX as a DequantizeLinear of an int8/int32
    initializer (the form ONNX Runtime fuses into QLinearConv, QGemm and MatMulIntegerToFloat)."""

    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
                ) -> torch.Tensor:
        shape = [1] * codes.dim()
        shape[axis] = -1
        return (codes.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero_point: Any, axis: int) -> Any:
        if codes.type().scalarType() == "Int":
            # an int32 bias's zero points are 0, DequantizeLinear's default: left out of the file (4 bytes per
            # channel); ORT's QGemm fusion needs the int8 weight's, so those stay
            return g.op("DequantizeLinear", codes, scale, axis_i=axis)
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


def _export_qdq(t: torch.Tensor, scale: float, zero_point: int, spec: QuantSpec, mode: str) -> torch.Tensor:
    if mode == "export":
        return _QDQ.apply(t, scale, zero_point, spec.qmin, spec.qmax)
    qd, dtype = torch.ops.quantized_decomposed, torch.uint8 if spec.qmin >= 0 else torch.int8
    q = qd.quantize_per_tensor.default(t, scale, zero_point, spec.qmin, spec.qmax, dtype)
    return qd.dequantize_per_tensor.default(q, scale, zero_point, spec.qmin, spec.qmax, dtype)


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                      mode: str) -> torch.Tensor:
    """Per-channel integer codes (int8 weights, int32 biases) times scales, as the export ``mode`` writes them:
    a DequantizeLinear in ONNX; for ``export-torch`` a ``dequantize_per_channel`` of the int8 weight and a
    float bias (the pt2e form Inductor pattern-matches)."""
    if mode == "export":
        return DequantizeWeight.apply(codes, scale, zero_point, axis)
    if codes.dtype == torch.int32:
        return DequantizeWeight.forward(None, codes, scale, zero_point, axis)
    return torch.ops.quantized_decomposed.dequantize_per_channel.default(
        codes, scale, zero_point.to(torch.int64), axis, -128, 127, torch.int8)


def _token() -> int | None:
    return _ACTIVE[-1].token if _ACTIVE else None


def _get(t: torch.Tensor, attr: str) -> Any:
    """A per-pass attribute of ``t``: tags, quantized copies and marks live on the tensors of one forward pass;
    on a tensor that outlives it (an input reused, a buffer) they are stale from the next pass on."""
    entry = getattr(t, attr, None)
    return entry[1] if entry is not None and entry[0] == _token() else None


def tag_of(t: Any) -> tuple[str, str, bool] | None:
    """(state, point key, produced by a convolution) of a tensor seen in the watched forward pass."""
    return _get(t, _TAG) if isinstance(t, torch.Tensor) else None


def _set_tag(t: torch.Tensor, state: str, key: str, conv: bool = False) -> None:
    setattr(t, _TAG, (_token(), (state, key, conv)))
    for stale in (_CACHE, _SEEN):  # an in-place op changed the tensor: its quantized copy and mark are stale
        if hasattr(t, stale):
            delattr(t, stale)


def share_point(src: torch.Tensor, dst: torch.Tensor) -> None:
    """``dst`` (computed from ``src`` outside the watched ops: a constant pad) is quantized at ``src``'s point."""
    tag = tag_of(src)
    if tag is not None:
        _set_tag(dst, *tag)


def _conv_output(t: Any) -> bool:
    """A convolution's int8 output not quantized yet (its point may still move past a BatchNorm or Relu)."""
    tag = tag_of(t)
    return tag is not None and tag[0] == PENDING and tag[2]


def _int8(t: Any) -> bool:
    tag = tag_of(t)
    return tag is not None and tag[0] != FLOAT


def _is_activation(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not isinstance(t, nn.Parameter)


class ActivationPoints:
    """The activation quantization points of one model and the mode they run in (see the module doc).

    Attached to the model as ``model.fq_points`` by :func:`attach`; a forward pass of the model then
    applies them. ``spec`` and ``observer`` set how new points are quantized and calibrated; ``ops`` which
    kinds of activation ops (:data:`OP_KINDS`) run int8; ``epilogues`` places the points for int8 kernels with
    post-ops (oneDNN through Inductor, see :data:`EPILOGUE_RULES`) instead of ONNX Runtime's QLinear kernels."""

    def __init__(self, spec: QuantSpec, observer: str = "minmax", seed: int = 0,
                 ops: tuple[str, ...] = OP_KINDS, epilogues: bool = False) -> None:
        self.spec, self.observer, self.seed, self.ops = spec, observer, seed, tuple(ops)
        self.epilogues = epilogues
        self.points: dict[str, Point] = {}
        self.mode = "simulate"
        self.observe_in_training = False  # QAT: ranges follow the data while the model trains
        self.last_scope = ""  # the module the last watched pass entered last
        self._pass: _Pass | None = None

    # --- points --------------------------------------------------------------------------------
    def point(self, key: str, spec: QuantSpec | None = None) -> Point:
        p = self.points.get(key)
        if p is None:
            if self.mode != "calibrate" and not self.observe_in_training and self.mode != "float":
                raise FinequantError(f"activation point {key!r} was never calibrated: the forward pass took a "
                                     "path calibration did not (another input kind?); quantize again with "
                                     "calibration data like the inputs it runs on")
            spec = spec or self.spec
            p = self.points[key] = Point(spec, OBSERVERS.get(self.observer)(spec, self.seed))
        return p

    def finish_calibration(self) -> None:
        for p in self.points.values():
            p.finish()
        missing = [k for k, p in self.points.items() if p.scale is None]
        if missing:
            raise FinequantError(f"activation point(s) {missing[:5]} saw no data during calibration")

    def state(self) -> dict[str, tuple[float, int]]:
        """``key -> (scale, zero point)`` of every calibrated point."""
        return {k: (float(p.scale), int(p.zero_point)) for k, p in self.points.items() if p.scale is not None}

    def load_state(self, state: dict[str, tuple[float, int]]) -> None:
        self.points = {}
        for key, (scale, zp) in state.items():
            spec = self.spec
            if "|a" in key:  # "<key>|a<bits><s|u>": a layer's own activation bits
                own = key.rsplit("|a", 1)[1]
                signed = own.endswith("s")
                spec = QuantSpec(bits=int(own[:-1]), symmetric=signed, signed=signed, granularity="per-tensor")
            p = self.points[key] = Point(spec, None)
            p.set(scale, zp)

    @contextlib.contextmanager
    def mode_as(self, mode: str) -> Iterator[None]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    # --- quantizing one tensor -------------------------------------------------------------------
    def quantize(self, t: torch.Tensor, key: str | None = None, spec: QuantSpec | None = None) -> torch.Tensor:
        """``t`` as its int8 consumer sees it: fake-quantized (simulate), observed (calibrate), wrapped in
        QuantizeLinear/DequantizeLinear (export) or unchanged (float). One result per tensor, shared by
        all its consumers."""
        if self.mode == "float" or not t.is_floating_point():
            return t
        cached = _get(t, _CACHE)
        if cached is not None:
            return cached
        tag = tag_of(t)
        if tag is not None:
            key = tag[1]
        elif key is None:
            raise FinequantError("an untracked tensor reached an int8 consumer outside a watched forward pass")
        if spec is not None and spec != self.spec:  # a layer with other activation bits: a point of its own
            key = f"{key}|a{spec.bits}{'s' if spec.signed else 'u'}"
        p = self.point(key, spec)
        if p.observer is not None and (self.mode == "calibrate" or (self.observe_in_training
                                                                    and torch.is_grad_enabled())):
            if self.mode == "calibrate" and _get(t, _SEEN):
                return t
            p.observer.observe(t.detach())
            if self.mode != "calibrate":
                p.finish()
        # t itself where nothing changes (never cached on t: that would be a reference cycle through torch's C++
        # side, which Python's garbage collector cannot see, and every activation would leak)
        if self.mode == "calibrate":
            setattr(t, _SEEN, (_token(), True))
            return t
        if tag is not None and tag[0] == QUANTIZED and self.mode == "simulate":
            return t  # on this point's grid already (a view, MaxPool or pad of a quantized tensor)
        if self.mode.startswith("export"):
            out = _export_qdq(t, float(p.scale), int(p.zero_point), p.spec, self.mode)
        else:
            out = fake_quantize(t, p.scale, p.zero_point, p.spec)
        _set_tag(out, QUANTIZED, key)
        setattr(t, _CACHE, (_token(), out))
        return out

    def qparams_of(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        p = self.points.get(key)
        return None if p is None or p.scale is None else (p.scale, p.zero_point)



_ACTIVE: list[_Pass] = []
_TOKENS = itertools.count()


def current() -> _Pass | None:
    """The watched forward pass running now (innermost), if any."""
    return _ACTIVE[-1] if _ACTIVE else None


class _Pass(TorchFunctionMode):
    """One watched forward pass of the model: module scopes, op counters and the rule dispatch."""

    def __init__(self, points: ActivationPoints, root: nn.Module) -> None:
        super().__init__()
        self.token = next(_TOKENS)
        self.points = points
        self.names = {m: n for n, m in root.named_modules()}
        self.scopes: list[list[Any]] = [["", {}, None, None]]  # [scope name, op counters, module, hook handle]
        self.calls: dict[str, int] = {}
        self.opaque = 0  # inside a QuantLayer: it quantizes its own input; its internals are not activations
        self.root = root
        self.routes = _weight_routes(root)
        self.handles = [register_module_forward_pre_hook(self._enter),
                        register_module_forward_hook(self._exit, always_call=True)]

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    # --- module scopes -----------------------------------------------------------------------
    # A module's scope opens in the global pre-hook and closes in a forward hook appended to the module for
    # this call, which runs after the module's own hooks. Between the module's forward and that hook, its own
    # forward hooks run (PTQ captures, user instrumentation): their ops are not part of the model, so they
    # run unwatched and cannot shift the op counts that key the points.
    def _enter(self, module: nn.Module, args: Any) -> None:
        from finequant.quant.modules import QuantLayer

        name = self.names.get(module)
        if name is None:
            name = self.scopes[-1][0]
        k = self.calls[name] = self.calls.get(name, -1) + 1
        self.points.last_scope = name  # named by errors of tracers that fail inside it
        handle = module.register_forward_hook(self._leave, always_call=True)
        self.scopes.append([name if k == 0 else f"{name}#{k}", {}, module, handle])
        if isinstance(module, QuantLayer):
            self.opaque += 1

    def _exit(self, module: nn.Module, args: Any, out: Any) -> None:
        from finequant.quant.modules import QuantLayer

        if len(self.scopes) < 2 or self.scopes[-1][2] is not module:
            return
        if isinstance(module, QuantLayer):
            self.opaque -= 1
            if isinstance(out, torch.Tensor) and out.is_floating_point() and not self.opaque:
                conv = isinstance(module.layer, nn.modules.conv._ConvNd)
                int8_out = conv and module.act_mode == "static" and module.enabled
                _set_tag(out, PENDING if int8_out else FLOAT, f"{self.scopes[-1][0]}:out", conv)
        self.opaque += 1  # the module's own forward hooks follow

    def _leave(self, module: nn.Module, args: Any, out: Any) -> None:
        if len(self.scopes) < 2 or self.scopes[-1][2] is not module:
            return
        self.opaque -= 1
        self.scopes.pop()[3].remove()

    def site(self, op: str) -> str:
        scope, counters = self.scopes[-1][0], self.scopes[-1][1]
        k = counters[op] = counters.get(op, -1) + 1
        return f"{scope}/{op}{k}"

    # --- dispatch ----------------------------------------------------------------------------
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _op_name(func)
        if self.opaque or name in _SILENT or not _any_float(args, kwargs):
            return func(*args, **kwargs)
        kind, rule = (self.points.epilogues and EPILOGUE_RULES.get(name)) or RULES.get(name, (None, float_op))
        if kind is not None and kind not in self.points.ops:
            rule = float_op
        return rule(self, self.site(name), func, args, kwargs)

    def q(self, t: torch.Tensor, site: str) -> torch.Tensor:
        return self.points.quantize(t, site)

    def materialize(self, value: Any, site: str) -> Any:
        """``value`` with every pending tensor quantized (its producer then runs as an int8 kernel)."""
        if isinstance(value, torch.Tensor):
            tag = tag_of(value)
            return self.q(value, site) if tag is not None and tag[0] == PENDING else value
        if isinstance(value, (list, tuple)):
            return type(value)(self.materialize(v, site) for v in value)
        return value

    def tag(self, out: Any, state: str, key: str, conv: bool = False) -> Any:
        if isinstance(out, torch.Tensor):
            if out.is_floating_point():
                _set_tag(out, state, key, conv)
        elif isinstance(out, (list, tuple)):
            for i, v in enumerate(out):
                self.tag(v, state, key if state == QUANTIZED else f"{key}.{i}", conv)
        return out


def _op_name(func: Callable) -> str:
    name = getattr(func, "__name__", "")
    if name.startswith("__") and name.endswith("__") and name not in _SILENT:
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in ("add", "mul", "sub", "matmul", "truediv"):
            name = name[1:]
    return name.rstrip("_") or name


def _any_float(args: tuple, kwargs: dict) -> bool:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return True
        if isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in v):
            return True
    return False


def _weight_routes(root: nn.Module) -> dict[int, nn.Module]:
    """QuantLayers by the id of their float weight and of the quantized weight they expose (when computed): a
    parent that computes ``F.linear(x, child.weight)`` itself (torchvision's Swin) is routed through the child."""
    from finequant.quant.modules import QuantLayer

    routes = {}
    for m in root.modules():
        if isinstance(m, QuantLayer):
            routes[id(m.layer.weight)] = m
            if m._dequantized is not None:
                routes[id(m._dequantized)] = m
    return routes


# Introspection and other calls that compute no activation (never counted, never quantize).
_SILENT = frozenset({
    "__get__", "__set__", "size", "dim", "numel", "stride", "is_floating_point", "is_contiguous", "element_size",
    "__len__", "__bool__", "item", "tolist", "__format__", "__repr__", "__hash__", "__index__", "__int__",
    "__float__", "data_ptr", "storage_offset", "nelement", "ndimension", "get_device", "is_complex", "type",
    "__reduce_ex__", "__deepcopy__", "__setstate__", "has_names", "requires_grad_", "detach", "clone", "to",
    "cpu", "float", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "isfinite", "isnan", "all", "any",
    "numpy", "untyped_storage", "_is_view", "is_nonzero", "equal", "allclose"})


# --- rules: one function per kind of op; adding an op is one entry in RULES ----------------------------
Rule = Callable[[_Pass, str, Callable, tuple, dict], Any]


def float_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """An op that runs in float: its pending inputs are quantized first (so their producers run int8), unless
    the int8 kernels can write float (``epilogues``)."""
    if not p.points.epilogues:
        args, kwargs = p.materialize(args, site), {k: p.materialize(v, site) for k, v in kwargs.items()}
    return p.tag(func(*args, **kwargs), FLOAT, site)


def view_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Data movement (reshape, permute, slicing, MaxPool, pad, dropout at eval): an int8 tensor stays on
    its grid, so ONNX Runtime runs the op on uint8 (it drops the DequantizeLinear/QuantizeLinear around it)."""
    x = args[0]
    tag = tag_of(x)
    if tag is None or tag[0] == FLOAT:
        return float_op(p, site, func, args, kwargs)
    x = p.q(x, site)
    out = func(x, *args[1:], **kwargs)
    return p.tag(out, QUANTIZED, tag_of(x)[1])


def activation_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Relu/ReLU6/Clip after an int8 kernel: the quantization moves after it (its own, clipped range), and
    ONNX Runtime folds the activation into the kernel's output QuantizeLinear."""
    tag = tag_of(args[0])
    if tag is None or tag[0] != PENDING:
        return float_op(p, site, func, args, kwargs)
    return p.tag(func(*args, **kwargs), PENDING, site)


def batch_norm_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """A BatchNorm right after a convolution (QAT trains it unfolded) belongs to that convolution: the
    point after it is the convolution's output point, as it will be once the BatchNorm is folded."""
    if not _conv_output(args[0]):
        return float_op(p, site, func, args, kwargs)
    return p.tag(func(*args, **kwargs), PENDING, tag_of(args[0])[1], conv=True)


_INPLACE = {"add_": torch.add, "__iadd__": torch.add, "mul_": torch.mul, "__imul__": torch.mul}


def binary_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Add/Mul of two activations, at least one from an int8 kernel (residual Adds, squeeze-excitation
    gates): QLinearAdd/QLinearMul on both quantized inputs, output quantized at its consumer."""
    if len(args) < 2 or not (_is_activation(args[0]) and _is_activation(args[1])) \
            or not (_int8(args[0]) or _int8(args[1])):
        return float_op(p, site, func, args, kwargs)
    func = _INPLACE.get(getattr(func, "__name__", ""), func)  # in place -> out of place
    out = func(p.q(args[0], site), p.q(args[1], site), *args[2:], **kwargs)
    return p.tag(out, PENDING, site)


def conv_sum_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """A convolution's output plus an int8 tensor (a residual Add) as one oneDNN kernel, the convolution's
    ``sum`` post-op: the other input is quantized, the convolution's output is added unquantized in the
    kernel, and the sum is quantized at its consumer (a Relu after it folds in too)."""
    a = list(args[:2])
    fused = next((i for i, t in enumerate(a) if _conv_output(t)), None)
    if len(a) < 2 or fused is None or not (_is_activation(a[1 - fused]) and _int8(a[1 - fused])):
        return binary_op(p, site, func, args, kwargs)
    a[1 - fused] = p.q(a[1 - fused], site)
    func = _INPLACE.get(getattr(func, "__name__", ""), func)
    return p.tag(func(*a, *args[2:], **kwargs), PENDING, site)


def unary_int8_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Sigmoid and global/average pooling of an int8 tensor: QLinearSigmoid (a lookup table) and
    QLinearGlobalAveragePool/QLinearAveragePool; the output stays int8."""
    if not _int8(args[0]) or not _is_global_or_plain_pool(func, args, kwargs):
        return float_op(p, site, func, args, kwargs)
    return p.tag(func(p.q(args[0], site), *args[1:], **kwargs), PENDING, site)


def _is_global_or_plain_pool(func: Callable, args: tuple, kwargs: dict) -> bool:
    if getattr(func, "__name__", "") not in ("adaptive_avg_pool2d", "adaptive_avg_pool1d"):
        return True
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    return size in (1, (1, 1), [1, 1], (1,), [1])


def _gated(gate: Callable[[torch.Tensor], torch.Tensor], gate_name: str, gate_int8: bool, doc: str) -> Rule:
    """The rule for ``x * gate(x)`` of an int8 tensor: x quantized once, the gate quantized as the Mul's
    second input, the product QLinearMul."""

    def rule(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
        if not _int8(args[0]):
            return float_op(p, site, func, args, kwargs)
        x = p.q(args[0], site)
        g = p.tag(gate(x), PENDING if gate_int8 else FLOAT, f"{site}.{gate_name}")
        return p.tag(x * p.q(g, site), PENDING, site)

    rule.__doc__ = doc
    return rule


silu_op = _gated(torch.sigmoid, "sigmoid", True, "SiLU as ONNX Runtime's quantizer runs it: QLinearSigmoid (a "
                 "lookup table), then QLinearMul of x and the quantized gate.")
hardswish_op = _gated(F.hardsigmoid, "hardsigmoid", False, "Hardswish: the hard-sigmoid gate in float (ONNX "
                      "Runtime has no integer Hardswish; its own quantizer splits it the same way), the product "
                      "QLinearMul.")


def cat_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Concat of int8 tensors (DenseNet, SqueezeNet's fire modules): QLinearConcat."""
    tensors = args[0] if args else kwargs.get("tensors")
    if not isinstance(tensors, (list, tuple)) or not any(_int8(t) for t in tensors) \
            or not all(_is_activation(t) for t in tensors):
        return float_op(p, site, func, args, kwargs)
    rest = dict(kwargs)
    rest.pop("tensors", None)
    return p.tag(func([p.q(t, site) for t in tensors], *args[1:], **rest), PENDING, site)


def matmul_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """A product of two activations (attention's Q·Kᵀ and P·V): both inputs int8, float output, which ONNX
    Runtime runs as MatMulIntegerToFloat (0.74x the fp32 time at DeiT-tiny's shapes, AVX2; see
    docs/coverage.md). A product with a parameter is a layer finequant does not wrap: float."""
    if len(args) < 2 or not (_is_activation(args[0]) and _is_activation(args[1])) \
            or args[0].dim() < 2 or args[1].dim() < 2:
        return float_op(p, site, func, args, kwargs)
    return p.tag(func(p.q(args[0], site), p.q(args[1], site)), FLOAT, site)


def linear_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``F.linear(x, layer.weight, ...)`` called by a parent with a wrapped layer's weight: run the
    quantized layer (its bias is the layer's own)."""
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    layer = p.routes.get(id(weight))
    if layer is None and isinstance(weight, torch.Tensor) and not isinstance(weight, nn.Parameter):
        p.routes = _weight_routes(p.root)  # a quantized weight computed during this pass
        layer = p.routes.get(id(weight))
    if layer is None or bias is not layer.bias:  # (Swin V2 passes an edited copy of the bias: float)
        return float_op(p, site, func, args, kwargs)
    return layer(args[0] if args else kwargs["input"])


def attention_op(p: _Pass, site: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``F.scaled_dot_product_attention`` spelled out, so that Q·Kᵀ and P·V are int8 products
    (:func:`matmul_op`); softmax stays float."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    a = dict(zip(names, args), **kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if a.get("enable_gqa") or q.shape[-3:-2] != k.shape[-3:-2]:
        return float_op(p, site, func, args, kwargs)
    scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    scores = p.tag(torch.matmul(p.q(q, site), p.q(k, site).transpose(-2, -1)), FLOAT, f"{site}.scores") * scale
    mask = a.get("attn_mask")
    if a.get("is_causal"):
        n, m = q.shape[-2], k.shape[-2]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    if a.get("dropout_p"):
        probs = F.dropout(probs, a["dropout_p"], training=True)
    p.tag(probs, FLOAT, f"{site}.probs")
    return p.tag(torch.matmul(p.q(probs, site), p.q(v, site)), FLOAT, site)


RULES: dict[str, tuple[str | None, Rule]] = {
    **dict.fromkeys(("reshape", "view", "flatten", "permute", "transpose", "t", "squeeze", "unsqueeze",
                     "contiguous", "getitem", "chunk", "split", "unbind", "iter", "expand", "narrow", "select",
                     "movedim", "roll", "max_pool1d", "max_pool2d", "max_pool2d_with_indices", "pad", "dropout",
                     "flip"), (None, view_op)),
    **dict.fromkeys(("relu", "relu6", "hardtanh", "clamp", "clip"), (None, activation_op)),
    "batch_norm": (None, batch_norm_op), "linear": (None, linear_op),
    "add": ("add", binary_op), "mul": ("mul", binary_op), "sigmoid": ("sigmoid", unary_int8_op),
    **dict.fromkeys(("adaptive_avg_pool2d", "adaptive_avg_pool1d", "avg_pool2d", "avg_pool1d"), ("pool", unary_int8_op)),
    "silu": ("silu", silu_op), "hardswish": ("hardswish", hardswish_op),
    **dict.fromkeys(("cat", "concat", "concatenate"), ("concat", cat_op)),
    **dict.fromkeys(("matmul", "bmm"), ("matmul", matmul_op)), "scaled_dot_product_attention": ("matmul", attention_op),
}
"""op name -> (the kind of int8 op it becomes, which :attr:`ActivationPoints.ops` switches; None: always on,
the rule). Ops not listed run in float (:func:`float_op`)."""

EPILOGUE_RULES: dict[str, tuple[str | None, Rule]] = {
    "hardswish": (None, activation_op), "silu": (None, activation_op), "add": ("add", conv_sum_op)}
"""The rules that differ for int8 kernels with post-ops (``ActivationPoints.epilogues``): oneDNN's int8
convolution, as Inductor lowers torchao's pt2e form, runs Hardswish/SiLU and a residual Add inside the kernel
before quantizing its output, and can write float for a float consumer; X86InductorQuantizer places its points
the same way."""
# --- attaching to a model ----------------------------------------------------------------------------
def attach(model: nn.Module, points: ActivationPoints) -> ActivationPoints:
    """Make every forward pass of ``model`` apply ``points`` (hooks on the root module)."""
    model.fq_points = points
    model.register_forward_pre_hook(_start, with_kwargs=True)
    model.register_forward_hook(_stop, always_call=True)
    return points


def detach(model: nn.Module) -> None:
    """Remove the activation points from ``model`` (a float copy of a quantized model)."""
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for k in [k for k, h in hooks.items() if h in (_start, _stop)]:
            del hooks[k]
    model.__dict__.pop("fq_points", None)


def points_of(model: nn.Module) -> ActivationPoints | None:
    return getattr(model, "fq_points", None)


def _start(model: nn.Module, args: tuple, kwargs: dict) -> None:
    points = model.fq_points
    if points._pass is not None:  # re-entered (a module calling the root again): already watched
        return
    points._pass = _Pass(points, model)
    points._pass.__enter__()
    _ACTIVE.append(points._pass)
    for i, t in enumerate(args):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            _set_tag(t, FLOAT, "input" if i == 0 else f"input{i}")
    for k, t in kwargs.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            _set_tag(t, FLOAT, f"input.{k}")


def _stop(model: nn.Module, args: tuple, out: Any) -> None:
    """End the watched pass. A pending output stays float: the file ends in the same float op (replacing the
    output in a hook would also break the ONNX tracer)."""
    points = model.fq_points
    p = points._pass
    if p is None or len(p.scopes) != 1:
        return
    p.__exit__(None, None, None)
    p.close()
    _ACTIVE.remove(p)
    points._pass = None
