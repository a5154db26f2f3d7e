"""Execution backends (registry): each turns a saved model folder into a callable on numpy batches.

``torch`` runs the float model eagerly (fp32, or fp16/bf16 weights for a cast-quantized model);
``torch-sim`` runs finequant's fake-quant simulation (the accuracy reference); ``onnxruntime``
exports to ONNX (QDQ int8 for a static-quantized model, integer MatMuls for a dynamic one, else
fp32) and runs integer kernels; ``openvino`` (optional extra) compiles the same ONNX for the CPU.
Batches are numpy arrays (images) or dicts of named int arrays (text: the tokenizer's output).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.errors import FinequantError, ModelError
from finequant.models import LoadedModel, load_artifact
from finequant.quant.api import QuantizedModel
from finequant.quant.artifact import QUANT_CONFIG, load_quantized
from finequant.quant.config import QuantConfig
from finequant.registry import Registry
from finequant.runtime.onnx_dynamic import export_dynamic
from finequant.runtime.onnx_qdq import export_float, export_qdq, float_copy
from finequant.runtime.ort import run as ort_run
from finequant.runtime.ort import session as ort_session


Batch = np.ndarray | dict[str, np.ndarray]
SAMPLE_TEXT = ("an engaging , funny and touching film , although its second half drags and the ending "
               "feels rushed , the cast carries it .")


def to_numpy(x: torch.Tensor | dict[str, torch.Tensor]) -> Batch:
    return {k: v.numpy() for k, v in x.items()} if isinstance(x, dict) else x.numpy()


def batch_size(x: Batch) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else x.shape[0]


@dataclass
class Runner:
    """A ready model: ``predict(batch) -> logits``, plus the file it runs from and its size."""

    backend: str
    predict: Callable[[Batch], np.ndarray]
    model_file: Path | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int | None:
        return self.model_file.stat().st_size if self.model_file else None


@dataclass
class Saved:
    """A saved float model folder or quantized folder, loaded once."""

    path: Path
    loaded: LoadedModel
    quantized: bool

    @classmethod
    def open(cls, path: str | Path) -> Saved:
        path = Path(path)
        if (path / "model" / "model.json").is_file():  # a finetune run folder
            path = path / "model"
        if (path / QUANT_CONFIG).is_file():
            loaded, _ = load_quantized(path)
            return cls(path, loaded, True)
        if (path / "model.json").is_file():
            return cls(path, load_artifact(path), False)
        raise ModelError(f"{path} holds no finequant model (model.json or {QUANT_CONFIG}); pass a run, model or "
                         "quantize output folder")

    def example(self, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
        return example_input(self.loaded, batch)

    def quantized_model(self) -> QuantizedModel:
        cfg = QuantConfig.from_dict(json.loads((self.path / QUANT_CONFIG).read_text())["config"])
        return QuantizedModel(self.loaded.model, cfg)


def example_input(loaded: LoadedModel, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
    """A seeded random image batch of the model's input size, or a tokenized batch of a typical
    review-length sentence for text models (export tracing, benchmarks)."""
    if loaded.task == "text":
        return dict(loaded.tokenizer([SAMPLE_TEXT] * batch, return_tensors="pt"))
    s = loaded.preprocess.input_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))


BackendFn = Callable[[Saved, Path, int | None], Runner]
BACKENDS: Registry[BackendFn] = Registry("backend")


def _torch_runner(name: str, model: torch.nn.Module, file: Path | None, threads: int | None,
                  dtype: torch.dtype = torch.float32) -> Runner:
    if threads:
        torch.set_num_threads(threads)
    model.eval()

    def predict(x: Batch) -> np.ndarray:
        with torch.inference_mode():
            if isinstance(x, dict):
                return model(**{k: torch.from_numpy(v) for k, v in x.items()}).float().numpy()
            return model(torch.from_numpy(x).to(dtype)).float().numpy()

    return Runner(name, predict, file)


@BACKENDS.register("torch-sim", "finequant's fake-quant simulation in PyTorch (the accuracy reference)")
def torch_sim(saved: Saved, workdir: Path, threads: int | None) -> Runner:
    file = saved.path / ("quant.safetensors" if saved.quantized else "model.safetensors")
    return _torch_runner("torch-sim", saved.loaded.model, file, threads)


@BACKENDS.register("torch", "eager PyTorch: fp32, real fp16/bf16 weights, or dynamic int8 Linear kernels")
def torch_eager(saved: Saved, workdir: Path, threads: int | None) -> Runner:
    if not saved.quantized:
        return _torch_runner("torch", saved.loaded.model, saved.path / "model.safetensors", threads)
    method = saved.quantized_model().config.method
    if method == "dynamic":
        from finequant.runtime.torch_int8 import dynamic_int8_model

        model, done = dynamic_int8_model(saved.loaded.model)
        runner = _torch_runner("torch", model, saved.path / "quant.safetensors", threads)
        runner.info["layers"] = done
        return runner
    if method not in ("fp16", "bf16"):
        raise FinequantError(f"the torch backend runs float, fp16/bf16 and dynamic int8 models; a '{method}' "
                             "model runs on 'onnxruntime' (int8) or 'torch-sim'")
    dtype = torch.float16 if method == "fp16" else torch.bfloat16
    return _torch_runner("torch", float_copy(saved.loaded.model).to(dtype), saved.path / "quant.safetensors",
                         threads, dtype)


@BACKENDS.register("onnxruntime", "ONNX Runtime CPU: QDQ int8 (QLinearConv...) or fp32")
def onnxruntime(saved: Saved, workdir: Path, threads: int | None) -> Runner:
    path = workdir / ("model.int8.onnx" if saved.quantized else "model.fp32.onnx")
    export_onnx(saved, path)
    sess = ort_session(path, threads=threads)
    return Runner("onnxruntime", lambda x: ort_run(sess, x), path)


def export_onnx(saved: Saved, path: Path) -> dict[str, str]:
    """The ONNX file a backend runs: QDQ int8 (static/QAT), integer MatMuls (dynamic) or fp32."""
    example = saved.example()
    if not saved.quantized:
        export_float(saved.loaded.model, example, path)
        return {}
    qm = saved.quantized_model()
    if qm.config.method in ("static", "qat") and not isinstance(example, dict):
        return export_qdq(qm, example, path)[1]
    if qm.config.method == "dynamic":
        return export_dynamic(qm, example, path)[1]
    raise FinequantError(f"onnxruntime runs static/QAT int8 image models and dynamic int8 models; "
                         f"'{qm.config.method}' models run on 'torch' (fp16/bf16) or 'torch-sim'")


@BACKENDS.register("openvino", "OpenVINO CPU plugin reading the same ONNX (pip install 'finequant[openvino]')")
def openvino(saved: Saved, workdir: Path, threads: int | None) -> Runner:
    try:
        import openvino as ov
    except ImportError as e:
        raise FinequantError("the openvino backend needs the optional extra: pip install 'finequant[openvino]'") from e
    onnx_runner = onnxruntime(saved, workdir, threads)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = core.compile_model(str(onnx_runner.model_file), "CPU", config)
    return Runner("openvino", lambda x: compiled(x)[0], onnx_runner.model_file)


def open_runner(path: str | Path, backend: str, threads: int | None = None,
                workdir: str | Path | None = None) -> Runner:
    """Load the saved model at ``path`` on ``backend``."""
    fn = BACKENDS.get(backend)
    saved = Saved.open(path)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="finequant-"))
    work.mkdir(parents=True, exist_ok=True)
    runner = fn(saved, work, threads)
    runner.info["task"] = saved.loaded.task
    runner.info["loaded"] = saved.loaded
    return runner
