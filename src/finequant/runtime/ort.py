"""ONNX Runtime execution: sessions with full graph optimization, and the ops they end up running."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from finequant.runtime.onnx_graph import graph_ops

INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearGlobalAveragePool", "QLinearMul",
               "QLinearSigmoid", "QLinearConcat", "QLinearAveragePool", "QLinearSoftmax", "QLinearLeakyRelu",
               "NhwcMaxPool")


def session(model: str | Path | bytes, threads: int | None = None, optimized_path: str | Path | None = None,
            spin: bool = True) -> ort.InferenceSession:
    """A CPU session with all graph optimizations; ``optimized_path`` saves the graph ORT will run.

    ``spin=False`` stops idle worker threads from busy-waiting, so that several sessions (or PyTorch)
    timed side by side in one process do not steal each other's cores.
    """
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """Logits for an image batch (one float input) or a text batch (its tokenizer's named int arrays)."""
    if isinstance(x, dict):
        return sess.run(None, {i.name: x[i.name] for i in sess.get_inputs()})[0]
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def optimized_ops(model: str | Path | bytes, workdir: str | Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually executes after its optimizations."""
    path = Path(workdir) / "optimized.onnx"
    session(model, optimized_path=path)
    return graph_ops(onnx.load(str(path)))


def integer_ops(ops: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in ops.items() if k in INTEGER_OPS}
