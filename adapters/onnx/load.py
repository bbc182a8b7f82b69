"""Reading the user's ONNX model (file or ModelProto) and bringing it to the opset qa needs."""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Tuple

import onnx
from onnx import TensorProto, external_data_helper

from ...errors import QAValueError
from .nodes import STANDARD_DOMAINS, all_nodes, subgraphs

__all__ = ["load_model", "upgrade_opset", "without_graph", "MIN_OPSET"]

log = logging.getLogger("qa.adapters.onnx")

MIN_OPSET = 11  # Clip with min/max inputs, Round
_PRE_QUANTIZED = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QGemm",
    "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "MatMulNBits",
    "MatMulBnb4", "GatherBlockQuantized", "QuantizeBFP", "DequantizeBFP", "QEmbedLayerNormalization"})


def load_model(model: Any) -> Tuple[onnx.ModelProto, str]:
    """The model (external data loaded) and how to name it in errors.

    A ModelProto is returned as is, not copied: the adapter only reads it (the nodes it changes
    are copies), so a large model is not held twice.

    Args:
        model: an ``onnx.ModelProto`` or the path of a ``.onnx`` file.

    Returns:
        (model, description) where the description names the file or the graph.

    Raises:
        QAValueError: the file is missing, malformed or truncated, an external data file it
            names is missing (the error says which and where it was looked for), the model is
            quantized already, or a ModelProto refers to external data that was not loaded.
    """
    if isinstance(model, onnx.ModelProto):
        loaded = model
        source = f"the ONNX model (graph '{loaded.graph.name}')"
        for t in loaded.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                raise QAValueError(f"{source}: initializer '{t.name}' lives in an external data file that was not "
                                   f"loaded; pass the path of the .onnx file instead, or load it with "
                                   f"onnx.load(path, load_external_data=True)")
    elif isinstance(model, (str, os.PathLike)):
        loaded, source = _load_file(os.fspath(model))
    else:
        raise QAValueError(f"expected an onnx.ModelProto or the path of a .onnx file, got {type(model).__name__}")
    _check_usable(loaded, source)
    return loaded, source


def _load_file(path: str) -> Tuple[onnx.ModelProto, str]:
    source = f"ONNX file '{path}'"
    if not os.path.isfile(path):
        raise QAValueError(f"{source} not found")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise QAValueError(f"{source} is not a valid ONNX model (malformed or truncated file): "
                           f"{type(e).__name__}: {e}") from None
    folder = os.path.dirname(os.path.abspath(path))
    external = list(_external_tensors(model.graph))
    for t in external:  # onnx would call a missing data file a malformed model
        location = external_data_helper.ExternalDataInfo(t).location
        looked = os.path.join(folder, location)
        if not os.path.isfile(looked):
            raise QAValueError(f"{source}: tensor '{t.name}' is stored in the external data file '{location}', "
                               f"which is missing (looked for {looked}); keep the data file next to the .onnx "
                               f"file, where it was saved")
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, folder)
        except Exception as e:
            raise QAValueError(f"{source}: its external data in {folder} cannot be read (truncated, or saved for "
                               f"another model?): {type(e).__name__}: {e}") from None
    return model, source


def _external_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """The tensors of a graph and its subgraphs (initializers, Constant values) whose data is in a file."""
    for t in graph.initializer:
        if external_data_helper.uses_external_data(t):
            yield t
    for node in graph.node:
        for a in node.attribute:
            for t in ([a.t] if a.type == onnx.AttributeProto.TENSOR else list(a.tensors)):
                if external_data_helper.uses_external_data(t):
                    yield t
        for g in subgraphs(node):
            yield from _external_tensors(g)


def _check_usable(model: onnx.ModelProto, source: str) -> None:
    if not model.HasField("graph") or not model.graph.node:
        raise QAValueError(f"{source} is not a usable ONNX model: it has no graph nodes (empty, malformed or "
                           f"truncated)")
    if not model.graph.output:
        raise QAValueError(f"{source} is not a usable ONNX model: its graph has no outputs (malformed or truncated)")
    quantized = sorted({n.op_type for n in all_nodes(model.graph)
                        if n.op_type in _PRE_QUANTIZED or n.op_type.startswith("QLinear")})
    if quantized:
        raise QAValueError(f"{source} is quantized already (it contains {', '.join(quantized)}); qa analyses FP32 "
                           f"models: pass the model before quantization")


def opset(model: onnx.ModelProto) -> int:
    """The model's version of the standard ONNX opset."""
    for imp in model.opset_import:
        if imp.domain in STANDARD_DOMAINS:
            return int(imp.version)
    return 1


def upgrade_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The model itself when its opset is MIN_OPSET or later, else a converted copy."""
    version = opset(model)
    if version >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        raise QAValueError(f"{source} uses opset {version}; qa needs opset {MIN_OPSET} or later and the "
                           f"conversion failed ({type(e).__name__}: {e})") from None
    log.info("%s: converted from opset %d to %d", source, version, MIN_OPSET)
    return converted


def without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's opsets, IR version, functions and graph name, with an empty graph."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.name = model.graph.name
    return out
