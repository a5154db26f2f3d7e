"""Execution backends: each turns a model (saved folder or in memory) into a callable on numpy batches.

``torch`` runs the float model eagerly (fp32, or fp16/bf16 weights for a cast-quantized model, or
PyTorch's int8 kernels for dynamic Linears); ``torch-sim`` runs finequant's fake-quant simulation
(the accuracy reference); ``onnxruntime`` exports with the method's exporter (QDQ int8, integer
MatMuls, or fp32) and runs integer kernels; ``openvino`` (optional extra) compiles the same ONNX.
Batches are numpy arrays (images) or dicts of named int arrays (text: the tokenizer's output).
The registry itself is :data:`finequant.catalog.BACKENDS`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.catalog import BACKENDS, METHODS
from finequant.errors import FinequantError, ModelError
from finequant.models import LoadedModel, load_artifact
from finequant.quant.api import QuantizedModel
from finequant.quant.artifact import QUANT_CONFIG, QUANT_WEIGHTS, load_quantized
from finequant.quant.config import QuantConfig
from finequant.runtime.ort import run as ort_run
from finequant.runtime.ort import session as ort_session

log = logging.getLogger(__name__)

Batch = np.ndarray | dict[str, np.ndarray]
SAMPLE_TEXT = ("an engaging , funny and touching film , although its second half drags and the ending "
               "feels rushed , the cast carries it .")


def to_numpy(x: torch.Tensor | dict[str, torch.Tensor]) -> Batch:
    return {k: v.numpy() for k, v in x.items()} if isinstance(x, dict) else x.numpy()


def batch_size(x: Batch) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else x.shape[0]


def example_input(loaded: LoadedModel, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
    """A seeded random image batch of the model's input size, or a tokenized batch of a typical
    review-length sentence for text models (export tracing, benchmarks, latency probes)."""
    if loaded.task == "text":
        return dict(loaded.tokenizer([SAMPLE_TEXT] * batch, return_tensors="pt"))
    s = loaded.preprocess.input_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))


@dataclass
class Deployable:
    """A model ready to run or export: the float model, or its quantized copy, from memory or a folder.

    ``loaded`` carries preprocessing, tokenizer and classes; ``quantized`` is set for quantized
    models; ``path`` is the folder it was read from (None in memory)."""

    loaded: LoadedModel
    quantized: QuantizedModel | None = None
    path: Path | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.quantized.model if self.quantized is not None else self.loaded.model

    @property
    def method(self) -> str | None:
        return self.quantized.config.method if self.quantized is not None else None

    @classmethod
    def open(cls, path: str | Path, *, trust_remote_code: bool = False) -> Deployable:
        """A finetune run folder, a model folder or a quantize/tune output folder."""
        path = Path(path)
        if (path / "model" / "model.json").is_file():  # a finetune run folder
            path = path / "model"
        if (path / QUANT_CONFIG).is_file():
            loaded, _ = load_quantized(path, trust_remote_code=trust_remote_code)
            cfg = QuantConfig.from_dict(json.loads((path / QUANT_CONFIG).read_text())["config"])
            return cls(loaded, QuantizedModel(loaded.model, cfg), path)
        if (path / "model.json").is_file():
            return cls(load_artifact(path, trust_remote_code=trust_remote_code), None, path)
        raise ModelError(f"{path} holds no finequant model (model.json or {QUANT_CONFIG}); pass a run, model or "
                         "quantize output folder")

    @classmethod
    def of(cls, model: Any, loaded: LoadedModel | None = None, *, trust_remote_code: bool = False) -> Deployable:
        """Whatever a user holds: a path, a LoadedModel, or a QuantizedModel (with the ``loaded`` it came from)."""
        if isinstance(model, Deployable):
            return model
        if isinstance(model, (str, Path)):
            return cls.open(model, trust_remote_code=trust_remote_code)
        if isinstance(model, LoadedModel):
            return cls(model)
        if isinstance(model, QuantizedModel):
            if loaded is None:
                raise ModelError("a QuantizedModel runs with the LoadedModel it was made from (its preprocessing "
                                 "or tokenizer): pass loaded=...")
            return cls(loaded, model)
        raise ModelError(f"cannot run a {type(model).__name__}: pass a folder, a LoadedModel (load_model) or a "
                         "QuantizedModel (quantize) with loaded=")

    def example(self, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
        return example_input(self.loaded, batch)

    def weights_file(self) -> Path | None:
        if self.path is None:
            return None
        return self.path / (QUANT_WEIGHTS if self.quantized is not None else "model.safetensors")


@dataclass
class Runner:
    """A ready model: ``predict(batch) -> logits``, plus the file it runs from and its size.

    Use it as a context manager (or call :meth:`close`) to remove its work folder."""

    backend: str
    predict: Callable[[Batch], np.ndarray]
    model_file: Path | None
    info: dict[str, Any] = field(default_factory=dict)
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def file_bytes(self) -> int | None:
        return self.model_file.stat().st_size if self.model_file and self.model_file.exists() else None

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BackendFn = Callable[[Deployable, Path, int | None], Runner]


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


def torch_sim(dep: Deployable, workdir: Path, threads: int | None) -> Runner:
    return _torch_runner("torch-sim", dep.model, dep.weights_file(), threads)


def torch_eager(dep: Deployable, workdir: Path, threads: int | None) -> Runner:
    if dep.quantized is None:
        return _torch_runner("torch", dep.model, dep.weights_file(), threads)
    method = dep.method
    if not BACKENDS.info("torch").runs(METHODS.info(method)):
        raise FinequantError(f"the torch backend runs float, fp16/bf16 and dynamic int8 models; a '{method}' "
                             "model runs on 'onnxruntime' (int8) or 'torch-sim'")
    if method == "dynamic":
        from finequant.runtime.torch_int8 import dynamic_int8_model

        model, done = dynamic_int8_model(dep.model)
        runner = _torch_runner("torch", model, dep.weights_file(), threads)
        runner.info["layers"] = done
        return runner
    from finequant.runtime.onnx_qdq import float_copy

    dtype = torch.float16 if method == "fp16" else torch.bfloat16
    return _torch_runner("torch", float_copy(dep.model).to(dtype), dep.weights_file(), threads, dtype)


def onnxruntime(dep: Deployable, workdir: Path, threads: int | None) -> Runner:
    from finequant.runtime.exporters import default_onnx_exporter, export_with

    fmt = default_onnx_exporter(dep)
    path = workdir / f"model.{fmt}.onnx"
    report = export_with(fmt, dep, path)
    sess = ort_session(path, threads=threads)
    return Runner("onnxruntime", lambda x: ort_run(sess, x), path, {"export": report})


def torch_inductor(dep: Deployable, workdir: Path, threads: int | None) -> Runner:
    """Static int8 models compiled by ``torch.compile`` (Inductor's oneDNN int8 kernels), float ones compiled
    as they are; the first batch of each size compiles."""
    from finequant.runtime.torch_inductor import CompiledInt8

    if threads:
        torch.set_num_threads(threads)
    if dep.quantized is None:
        model = torch.compile(dep.model.eval())
    elif BACKENDS.info("torch-inductor").runs(METHODS.info(dep.method)) and dep.loaded.task == "image":
        model = CompiledInt8(dep.quantized)
    else:
        raise FinequantError(f"the torch-inductor backend runs float models and static int8 image models; a "
                             f"'{dep.method}' {dep.loaded.task} model runs on 'torch', 'onnxruntime' or 'torch-sim'")

    def predict(x: Batch) -> np.ndarray:
        with torch.no_grad():
            if isinstance(x, dict):
                return model(**{k: torch.from_numpy(v) for k, v in x.items()}).float().numpy()
            return model(torch.from_numpy(x)).float().numpy()

    runner = Runner("torch-inductor", predict, dep.weights_file())
    runner.info["compile"] = getattr(model, "seconds", {})
    return runner


def openvino(dep: Deployable, workdir: Path, threads: int | None) -> Runner:
    try:
        import openvino as ov
    except ImportError as e:
        raise FinequantError("the openvino backend needs the optional extra: pip install 'finequant[openvino]'") from e
    onnx_runner = onnxruntime(dep, workdir, threads)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = core.compile_model(str(onnx_runner.model_file), "CPU", config)
    return Runner("openvino", lambda x: compiled(x)[0], onnx_runner.model_file, onnx_runner.info)


def open_runner(model: Any, backend: str, threads: int | None = None, *, loaded: LoadedModel | None = None,
                workdir: str | Path | None = None, trust_remote_code: bool = False) -> Runner:
    """``model`` (a saved folder, a LoadedModel, or a QuantizedModel with its ``loaded``) on ``backend``.

    Files the backend writes go to ``workdir``, or to a temporary folder removed by ``Runner.close``."""
    fn = BACKENDS.get(backend)
    dep = Deployable.of(model, loaded, trust_remote_code=trust_remote_code)
    qm = dep.quantized
    if qm is not None and qm.points is not None and qm.config.runtime != backend \
            and backend not in ("torch", "torch-sim"):
        log.warning("this model's activation points are placed for %s; %s computes the same, maybe slower: for its "
                    "fastest int8 kernels quantize with QuantConfig(runtime=%r) (--runtime %s)", qm.config.runtime,
                    backend, backend, backend)
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="finequant-")
    work = Path(workdir) if workdir else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        runner = fn(dep, work, threads)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    runner._workdir = tmp
    runner.info.update(task=dep.loaded.task, loaded=dep.loaded, deployable=dep)
    return runner
