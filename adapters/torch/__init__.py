"""PyTorch adapter: a private copy of the model, batch-norm folding, and every op quantized.

The user's module is never touched: the adapter deep-copies it, folds batch norms into the
copy, and installs its hooks and its function mode (:mod:`.calls`) on the copy only. Tensors
cross into qa as float32 numpy arrays (zero-copy on the CPU) and come back with
``torch.from_numpy``; CUDA tensors stay on the device and use qa's CUDA kernels when available.

What is a layer (:mod:`.ops` has the vocabulary):

* every call of a *known* leaf module (``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU``, ... with no
  children): the first call keeps the module's name (AIMET's key), later ones are
  ``<module>/call_<k>``;
* every torch op computing on the model's inputs outside those modules (``F.conv2d``,
  ``torch.matmul``/``@``, ``x + y``, ``softmax``, ``F.layer_norm``, ...), named
  ``<module call>/<op>[_<n>]`` after the module whose forward calls it (``layer1.0/add``,
  ``encoder.layer.0.attention.self/matmul_1``); a leaf module of another class whose forward runs
  one such op (an ``Add`` module, say) is that op's layer under the module's own name.

Data movement (view, permute, indexing, dropout in eval, ...) and computations on parameters
and constants alone (which a deployed graph folds) are no layers. Parameters an op reads are
parameter quantizers of that op (``F.conv2d(x, self.weight)``: ``<layer>_weight``), folded with
a following batch norm exactly as a module's would be. A parameter is one quantizer however
many layers read it (tied weights), named after the first.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import torch
from torch import nn

from ...errors import QAValueError
from ...graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer
from .. import register
from .._base import FLOAT, ActiveSet, Adapter, check_ignored
from .calls import Call, Interceptor, OpKey, Site, Trace, tensors
from .memo import Memo
from .fold import batch_norm_pairs, fold_batch_norms, fold_pair
from .ops import is_known_leaf, module_weight_axis, op_type_of, weight_axis

__all__ = ["TorchAdapter", "fold_batch_norms", "op_type_of"]

log = logging.getLogger("qa.adapters.torch")

# Composite functions whose inner ops run unseen (the mode sees only the call): listed as float.
_COMPOSITE = {"multi_head_attention_forward": "the attention inside it (its matmuls and softmax)"}


def _leaves(model: nn.Module) -> Dict[str, nn.Module]:
    """The known leaf modules (one layer per call), by name."""
    return {name: m for name, m in model.named_modules() if name and is_known_leaf(m)}


def _config_role(name: str) -> str:
    """The quantsim-config role of a parameter: ``weight_ih_l0`` (an LSTM's) is a weight,
    ``bias_hh_l0`` and ``in_proj_bias`` biases, so that the config's weight and bias settings reach them."""
    if "bias" in name:
        return "bias"
    return "weight" if "weight" in name else name


def _name_ops(trace: Trace, model: nn.Module) -> None:
    """Give every op that will be a layer its readable name: ``<scope>/<op>``, ``<scope>/<op>_1``,
    ... per scope in execution order (plain ``<op>`` in the model's own forward); the one op of a
    childless module of an unknown class takes the module call's name."""
    layer_ops = [c for c in trace.order if c.kind == "op" and c.dynamic and c.n_outputs]
    per_scope: Dict[str, List[Call]] = {}
    for call in layer_ops:
        per_scope.setdefault(call.module, []).append(call)
    modules = dict(model.named_modules())
    taken = {c.name for c in trace.order if c.kind == "module"}
    for scope, calls in per_scope.items():
        module = modules.get(scope.partition("/")[0]) if scope else None
        if len(calls) == 1 and module is not None and not any(True for _ in module.children()):
            calls[0].name = scope
            continue
        counts: Dict[str, int] = {}
        for call in calls:
            n = counts.get(call.info.name, 0)
            counts[call.info.name] = n + 1
            base = f"{scope}/{call.info.name}" if scope else call.info.name
            name = base if n == 0 else f"{base}_{n}"
            while name in taken:
                name += "_op"
            taken.add(name)
            call.name = name


def _uncopyable(model: nn.Module) -> str:
    """Which attribute of which submodule ``copy.deepcopy`` fails on, in words ("" if none alone does)."""
    for name, m in model.named_modules():
        where = f"module '{name}'" if name else "the model"
        for attr, value in vars(m).items():
            if attr == "_modules":
                continue  # each submodule is visited itself
            values = value.items() if attr in ("_parameters", "_buffers") else [(attr, value)]
            for key, v in values:
                try:
                    copy.deepcopy(v)
                except Exception as e:
                    return (f"attribute '{key}' of {where} (a {type(v).__module__}.{type(v).__qualname__}: "
                            f"{type(e).__name__}: {e})")
    return ""


def _copy_of(model: nn.Module) -> nn.Module:
    """A deep copy of the user's model, or a QAValueError that names what cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        what = _uncopyable(model) or f"the model ({type(e).__name__}: {e})"
        raise QAValueError(f"qa works on a copy of the model (it never changes yours), and copy.deepcopy cannot "
                           f"copy {what}; remove or replace that attribute before the analysis (or give its "
                           f"class a __deepcopy__)") from e



@register
class TorchAdapter(Adapter):
    """Exposes a torch model to qa's engine: layers, quantizers, and runs with any quantizers on.

    The analysis copy always runs in eval mode, as a deployed model does: ``activate`` (called
    before every evaluation) puts it back in eval mode, and ``train()`` on the copy or any of its
    modules is refused with a warning, so that a callback calling ``model.train()`` turns on no
    dropout and changes no batch-norm statistics.

    Layers are the calls of known leaf modules and the ops outside them (see the module
    docstring). A module called several times in one forward pass is one layer per call (``act``,
    ``act/call_1``, ...), each with its own activation quantizers; a parameter used by several
    layers (tied weights, a module called twice) is one quantizer, named after the first layer
    that uses it. Batch norms are not folded into a layer whose weight or bias is shared
    (``graph.unfolded_batch_norms`` says why).

    Example:
        >>> import torch
        >>> class Block(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        ...         self.bn = torch.nn.BatchNorm2d(4)
        ...     def forward(self, x):
        ...         return torch.relu(self.bn(self.conv(x))) + x
        >>> adapter = TorchAdapter(Block().eval(), torch.randn(1, 1, 8, 8))
        >>> [layer.name for layer in adapter.graph.layers]
        ['conv', 'relu', 'add']
        >>> adapter.graph.folded_batch_norms
        [('bn', 'conv')]
    """

    framework = "torch"
    priority = 20  # after Keras: a Keras model on the torch backend is an nn.Module too
    # How to get an operation that stays in float quantized in this framework.
    unquantized_hint = "they are not seen as separate ops by qa"

    def __init__(self, model: nn.Module, dummy_input: Any, *, modules_to_ignore: Optional[Iterable[Any]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise QAValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
        super().__init__()
        ignored = self._ignored_names(model, modules_to_ignore)
        # Everything below touches only this copy. It runs in eval mode: batch norms are folded
        # with their running statistics, and a deployed model does not train.
        self.model = _copy_of(model).eval()
        if model.training:
            log.info("the model is in training mode; qa analyses an eval-mode copy of it")
        self.dummy_input = dummy_input
        self._warned_train = False
        self._modules = list(self.model.modules())
        bias: Dict[OpKey, nn.Parameter] = {}
        calls, trace = self._trace(bias)
        _name_ops(trace, self.model)
        check_ignored(ignored, [n for n, _ in model.named_modules(remove_duplicate=False) if n]
                      + [c.name for c in trace.order if (c.kind == "module" and c.index) or (c.kind == "op" and c.name)],
                      "a module or op of the model (names as model.named_modules() gives them, <module>/call_<k>, "
                      "or an op's layer name)")
        pairs, refused = batch_norm_pairs(trace, calls.leaves)
        for bn, layer, reason in refused:
            log.info("batch norm %s is not folded into %s: %s", bn, layer, reason)
        folded = [(bn.module if bn.kind == "module" else bn.name, src.module if src.kind == "module" else src.name)
                  for src, bn in pairs]
        skipped: Set[OpKey] = set()
        if pairs:
            calls.close()
            for src, bn in pairs:
                new_bias = fold_pair(self.model, src, bn, calls.leaves)
                if new_bias is not None:
                    bias[src.key] = new_bias
                if bn.kind == "op":
                    skipped.add(bn.key)
            log.info("folded %d batch norm(s): %s", len(pairs), ", ".join(f"{b} -> {c}" for b, c in folded))
            self.model.eval()  # the Identity modules that replace batch norms are new
            self._modules = list(self.model.modules())
            calls, trace = self._trace(bias, skipped)
            _name_ops(trace, self.model)
        self._calls = calls
        # parameter quantizer -> (its definition, the parameter, the float values)
        self._params: Dict[str, Tuple[Quantizer, nn.Parameter, torch.Tensor]] = {}
        self.graph = self._build_graph(trace, calls.leaves, ignored)
        self.graph.folded_batch_norms = folded
        self.graph.unfolded_batch_norms = refused
        self._install_sites(trace, calls, ignored)
        self._structure = trace.structure()
        self._cuts = self._first_uses(trace)
        adapter = self

        def train(module: nn.Module, mode: bool = True) -> nn.Module:
            """``train()`` of qa's copy: it analyses the deployed model, so it stays in eval mode."""
            if mode:
                adapter._warn_train()
            return nn.Module.train(module, False)

        for m in self._modules:  # the copy stays in eval mode, whatever a callback asks
            m.train = types.MethodType(train, m)

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for a torch.nn.Module."""
        return isinstance(model, nn.Module)

    # -- construction --

    @staticmethod
    def _ignored_names(model: nn.Module, modules: Optional[Iterable[Any]]) -> Set[str]:
        """The module (or call) names to ignore; a container, given itself or by name, means all of its leaves."""
        if not modules:
            return set()
        by_id = {id(m): name for name, m in model.named_modules()}
        by_name = dict(model.named_modules(remove_duplicate=False))  # a module registered twice: both names
        names = set()
        for m in modules:
            if isinstance(m, str):
                names.add(m)
                if m in by_name:
                    prefix = by_id[id(by_name[m])]
                    names.update(n for n, _ in by_name[m].named_modules(prefix=prefix))
            elif id(m) in by_id:
                # a container means all of its leaves
                prefix = by_id[id(m)]
                names.update(n for n, _ in m.named_modules(prefix=prefix))
            else:
                raise QAValueError(f"modules_to_ignore: {type(m).__name__} object is not a module of this model")
        names.discard("")  # the model itself, ignored as a container: its leaves are in the set
        return names

    def _run(self, inputs: Any) -> Any:
        """Model inputs as AIMET's dummy_input: a tensor, a tuple of tensors, or a dict of keywords."""
        if isinstance(inputs, dict):
            return self.model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return self.model(*inputs)
        return self.model(inputs)

    def _trace(self, bias: Dict[OpKey, nn.Parameter], folded: Optional[Set[OpKey]] = None) -> Tuple[Interceptor, Trace]:
        """Install an interceptor on the copy and trace one pass on dummy_input with it."""
        calls = Interceptor(self, self.model, _leaves(self.model), bias, folded)
        names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        trace = Trace(tensors(self.dummy_input), names)
        try:
            calls.run_trace(lambda: self._run(self.dummy_input), trace)
        except Exception as e:
            calls.close()
            raise QAValueError(f"the model failed on dummy_input ({type(e).__name__}: {e}); "
                               f"pass a dummy_input the model accepts (a tensor, a tuple of tensors or a dict)") from e
        return calls, trace

    @staticmethod
    def _is_ignored(call: Call, ignored: Set[str]) -> bool:
        if call.name in ignored or call.module in ignored:
            return True
        return call.module.partition("/")[0] in ignored

    def _build_graph(self, trace: Trace, leaves: Dict[str, nn.Module], ignored: Set[str]) -> QuantGraph:
        """One layer per call of a known leaf module and per op on model data; one quantizer per
        parameter, shared by every layer using it."""
        producer: Dict[Tuple[int, int], str] = {}
        by_param: Dict[int, Quantizer] = {}
        layers: List[Layer] = []
        unquantized: List[str] = []
        for call in trace.order:
            if not self._is_layer(call, leaves, ignored):
                continue
            layer = self._layer(call, leaves)
            layer.inputs = list(dict.fromkeys(producer[k] for k in map(trace.source, call.inputs)
                                              if k in producer and producer[k] != layer.name))
            layer.model_input = any(trace.source(k) in trace.model_inputs for k in call.inputs)
            layer.model_output = any(k in trace.model_outputs for k in call.outputs)
            for role, p in self._layer_params(call, leaves):
                q = by_param.get(id(p))
                if q is None:
                    axis = (module_weight_axis(leaves[call.module]) if call.kind == "module"
                            else weight_axis(call.info.name, role, call.groups)) if _config_role(role) == "weight" else None
                    q = by_param[id(p)] = Quantizer(name=f"{layer.name}_{role}", layer=layer.name, kind=PARAM,
                                                    param=_config_role(role), shape=tuple(p.shape), axis=axis)
                    self._params[q.name] = (q, p, p.data)
                layer.quantizers.append(q)
            layer.quantizers += self._input_quantizers(call, trace, layer)
            for i in range(call.n_outputs):
                layer.quantizers.append(Quantizer(name=f"{layer.name}_output_{i}", layer=layer.name, kind=OUTPUT, index=i))
            for k in call.outputs:
                producer.setdefault(k, layer.name)
            if call.kind == "op" and call.info.name in _COMPOSITE:
                unquantized.append(f"{_COMPOSITE[call.info.name]} of {layer.name}")
            if call.kind == "op" and call.computed_weight:
                unquantized.append(f"the weight of {layer.name}, computed in forward from parameters")
            layers.append(layer)
        graph = QuantGraph(layers)
        graph.unquantized_ops = unquantized
        return graph

    @staticmethod
    def _is_layer(call: Call, leaves: Dict[str, nn.Module], ignored: Set[str]) -> bool:
        if TorchAdapter._is_ignored(call, ignored):
            return False
        if call.kind == "op":
            return call.dynamic and call.n_outputs > 0 and bool(call.name)
        if isinstance(leaves[call.module], nn.Identity):
            return False
        return not (call.outputs and set(call.outputs) <= set(call.inputs))  # returned its input (dropout)

    @staticmethod
    def _layer(call: Call, leaves: Dict[str, nn.Module]) -> Layer:
        if call.kind == "module":
            module = leaves[call.module]
            return Layer(name=call.name, op_type=op_type_of(module), type_name=type(module).__name__,
                         calls=0, call=call.index)
        return Layer(name=call.name, op_type=call.info.op_type, type_name=call.info.name)

    @staticmethod
    def _layer_params(call: Call, leaves: Dict[str, nn.Module]) -> List[Tuple[str, nn.Parameter]]:
        if call.kind == "module":
            return [(n, p) for n, p in leaves[call.module].named_parameters(recurse=False) if p.is_floating_point()]
        seen: Set[int] = set()
        found = []
        for role, p, _ in call.params:
            if p.is_floating_point() and id(p) not in seen:
                seen.add(id(p))
                found.append((role, p))
        return found

    @staticmethod
    def _input_quantizers(call: Call, trace: Trace, layer: Layer) -> List[Quantizer]:
        """Quantizers for model inputs a layer reads: a module's first input, an op's every one."""
        if not layer.model_input:
            return []
        if call.kind == "module":
            return [Quantizer(name=f"{layer.name}_input_0", layer=layer.name, kind=INPUT, index=0)]
        return [Quantizer(name=f"{layer.name}_input_{i}", layer=layer.name, kind=INPUT, index=i)
                for i, k in enumerate(call.inputs) if trace.source(k) in trace.model_inputs]

    def _install_sites(self, trace: Trace, calls: Interceptor, ignored: Set[str]) -> None:
        """Hand the interceptor each layer's quantizers, by module call and by op key."""
        for layer in self.graph.layers:
            layer.calls = 1
        for call in trace.order:
            if call.kind == "module":
                site = self._site(call.name)
                calls.module_sites.setdefault(call.module, []).append(site)
                if site is not None:
                    self.graph[call.name].calls = trace.calls[call.module]
            elif call.name in self.graph:
                calls.op_sites[call.key] = self._site(call.name)
        for name, m in calls.leaves.items():  # leaves that never ran but need no quantizers
            if name not in calls.module_sites and (name in ignored or isinstance(m, nn.Identity)):
                calls.module_sites[name] = [None]
        calls.traced_ops = set(trace.ops)

    def _first_uses(self, trace: Trace) -> Dict[str, int]:
        """Quantizer -> the position of the first call that uses it (memoized sweeps cut there): its
        layer's call for an activation, the first call reading the parameter for a weight."""
        position = {c.name: c.position for c in trace.order if c.name in self.graph}
        reads: Dict[int, int] = {}
        for c in trace.order:
            params = ([p for _, p, _ in c.params] if c.kind == "op" else
                      [p for p in self._calls.leaves[c.module]._parameters.values() if p is not None])
            for p in params:
                reads[id(p)] = min(reads.get(id(p), c.position), c.position)
        cuts: Dict[str, int] = {}
        for layer in self.graph.layers:
            for q in layer.quantizers:
                where = reads.get(id(self._params[q.name][1])) if q.kind == PARAM else position[layer.name]
                if where is not None:
                    cuts[q.name] = min(cuts.get(q.name, where), where)
        return cuts

    @contextlib.contextmanager
    def memoized(self, budget: int) -> Iterator[Callable[[Iterable[str]], None]]:
        """Within the block (one sweep), evaluations replay what cannot have changed (:mod:`.memo`);
        call the yielded function with the quantizers that differ from the sweep's reference
        before each evaluation."""
        memo = Memo(self._structure, self._cuts, budget, clone=False)
        self._calls.memo = memo
        try:
            yield lambda differing: memo.focus(list(differing))
        finally:
            self._calls.memo = None
            log.info("memoized sweep: %s", memo.stats())

    def _site(self, name: str) -> Optional[Site]:
        if name not in self.graph:
            return None
        layer = self.graph[name]
        return Site(name, {q.index: q for q in layer.quantizers if q.kind == INPUT},
                    [q for q in layer.quantizers if q.kind == OUTPUT])

    # -- runs --

    def _new_pass(self) -> None:
        """Each forward pass of the model runs in eval mode."""
        if any(m.training for m in self._modules):  # a callback set a training flag directly
            self._warn_train()
            nn.Module.train(self.model, False)

    def _warn_train(self) -> None:
        if not self._warned_train:
            self._warned_train = True
            log.warning("a callback put qa's copy of the model in training mode; it stays in eval mode (dropout "
                        "off, batch-norm statistics frozen), as deployed")

    @contextlib.contextmanager
    def observing(self, observers: Any, running: Optional[ActiveSet] = None) -> Iterator[None]:
        """Within the block, runs stream every quantizer's tensor into its observer; afterwards,
        modules and ops that ran but have no quantizers of their own for that run are warned about."""
        calls = self._calls
        calls.extra_calls.clear()
        calls.untraced_modules.clear()
        calls.untraced_ops.clear()
        with super().observing(observers, running):
            yield
        if calls.untraced_modules:
            log.warning("module(s) %s ran during calibration but not on dummy_input, so qa has no quantizers for "
                        "them and they stay in float; pass a dummy_input that runs them",
                        ", ".join(sorted(calls.untraced_modules)))
        if calls.extra_calls:
            log.warning("module(s) %s ran more often in one forward pass than on dummy_input; the extra calls "
                        "share the quantizers of the last call seen on dummy_input",
                        ", ".join(sorted(calls.extra_calls)))
        if calls.untraced_ops:
            log.warning("op(s) %s ran during calibration but not on dummy_input (a branch or loop that depends on "
                        "the data), so they stay in float; pass a dummy_input that runs them",
                        "; ".join(sorted(calls.untraced_ops)[:10]))

    # -- the verbs the engine uses --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer (a shared parameter once) with its float32 values (the folded ones)."""
        for q, _, original in self._params.values():
            yield q, original.detach().float().cpu().numpy()

    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> torch.Tensor:
        """The fake-quantized values as a tensor of the parameter's dtype, device and shape."""
        _, _, original = self._params[quantizer.name]
        q = torch.from_numpy(np.require(np.asarray(values), requirements="C")).to(dtype=original.dtype,
                                                                                   device=original.device)
        return q.reshape(original.shape)

    def _bind_weight(self, name: str, value: Optional[torch.Tensor]) -> None:
        _, param, original = self._params[name]
        param.data = original if value is None else value

    def activate(self, active: ActiveSet) -> None:
        """Run with exactly these quantizers on: parameters swap their data in O(1); the hooks
        quantize the activations ``active`` names. The copy is put back in eval mode (a callback
        may have set a module's ``training`` flag)."""
        nn.Module.train(self.model, False)
        self._active = active
        self._bind_weights(active.weights, list(self._params))

    def run(self, inputs: Any) -> Any:
        """One forward pass of the analysis copy on model inputs, without gradients."""
        with torch.no_grad():
            return self._run(inputs)

    def close(self) -> None:
        self._calls.close()
        self.activate(FLOAT)
