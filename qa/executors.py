"""Where the per-layer sweeps run: here (the default), or spread over the workers of a Ray cluster.

The per-layer evaluations of one sweep are independent of each other, so a model whose one
evaluation takes minutes can have its layers scored by many machines at once:
``analyzer.analyze(..., executor="ray")`` or ``executor=qa.RayExecutor(...)``.

How :class:`RayExecutor` works:

* The user's model, ``dummy_input``, ``modules_to_ignore`` and ``eval_callback`` are pickled
  once (cloudpickle) into Ray's object store together with the calibrated simulation's state:
  every quantizer's settings and encoding. Each worker (a Ray actor) builds its own adapter copy
  of the model and its own :class:`~qa.sim.QuantSim` from them: the encodings are the driver's
  (workers never calibrate), so every score is the one a local run computes. A worker checks
  that its folded weights, quantizers and encodings hash to the driver's before it evaluates.
* Layers are dealt out in contiguous ranges, one per worker; each worker evaluates its range
  inside ``adapter.memoized(budget)`` exactly as the local sweep does, so its memoized cut moves
  forward through the model. A worker that runs out of work takes the back half of the longest
  range left (its own memo context simply goes on).
* Scores come back one layer at a time (``ray.wait``) and are written to the same JSON files,
  in the same order, as the local sweep writes them: a run killed midway resumes from what was
  written, whichever executor either run used.
* A worker that dies (its process killed, its node lost) has its unfinished layers redone: by a
  replacement worker while ``max_worker_restarts`` allows, else by the workers left.
* The workers start at the first sweep (each spends a few seconds importing the framework and
  building its copy) and serve both sweeps of one ``analyze``, which stops them when it ends,
  however it ends (and Ray itself, when the executor started it).
* An error in ``eval_callback`` on a worker is raised on the driver as the same
  :class:`~qa.errors.QACallbackError` a local run raises (the worker's traceback added as a note).

``import qa`` never imports Ray; this module imports it only when a Ray executor is made.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import math
import os
import socket
import sys
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from .errors import QAError, QAValueError

__all__ = ["Executor", "RayExecutor", "resolve_executor", "evaluate_layer", "evaluate_variant", "RAY_INSTALL_HINT"]

log = logging.getLogger("qa")

RAY_INSTALL_HINT = "pip install qa-quant[ray]"

#: A sweep's result sink: ``finished(layer, score)``, called on the driver as each score arrives.
Finished = Callable[[str, float], None]


def evaluate_layer(sim: Any, eval_callback: Any, name: str, enable: bool,
                   focus: Optional[Callable[[Any], None]] = None, everything: Optional[Set[str]] = None) -> float:
    """One evaluation of a per-layer sweep: only ``name``'s quantizers on (``enable``), or every
    quantizer but its. The one definition the local sweep and every Ray worker run.

    Args:
        sim: the calibrated :class:`~qa.sim.QuantSim`.
        eval_callback: the analyzer's evaluation callback (a :class:`~qa.sim.CallbackFunc`).
        name: the layer.
        enable: True for the enabling sweep, False for the disabling one.
        focus: what ``adapter.memoized(budget)`` yielded, or None.
        everything: ``sim.enabled``, when the caller has it at hand.

    Returns:
        The score ``eval_callback`` returned.

    Example:
        >>> import torch, qa
        >>> from qa.executors import evaluate_layer
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
        >>> x = torch.randn(16, 4)
        >>> analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: m(x).sum().item(), progress=False)
        >>> sim = analyzer.create_quantsim("tf")
        >>> isinstance(evaluate_layer(sim, analyzer.eval_callback, "0", True), float)
        True
    """
    what = "enabling" if enable else "disabling"
    own = sim.layer_quantizers(name)
    if focus is not None:
        focus(own)  # what differs from the sweep's reference (nothing on / everything on)
    if not enable:
        everything = sim.enabled if everything is None else everything
    sim.set_active(own if enable else everything - own)
    return sim.evaluate(eval_callback, f"eval_callback (per-layer analysis by {what} quantizers, layer {name!r})")


def evaluate_variant(variant: Any, eval_callback: Any, label: str, focus: Optional[Callable[[Any], None]] = None,
                     differing: Iterable[str] = ()) -> float:
    """One evaluation of a variant of the fully quantized simulation (a candidate fix of
    :mod:`qa.recommend`): every quantizer of ``variant`` on. The one definition the local
    evaluation and every Ray worker run.

    Args:
        variant: a :meth:`~qa.sim.QuantSim.derive` (or ``adopt``) of the calibrated simulation.
        eval_callback: the analyzer's evaluation callback.
        label: what the variant is, for error messages ("layer 'fc', weights at 8 bits").
        focus: what ``adapter.memoized(budget)`` yielded, or None.
        differing: the quantizers whose settings differ from the fully quantized simulation.

    Returns:
        The score ``eval_callback`` returned.
    """
    if focus is not None:
        focus(list(differing))
    variant.set_active(variant.enabled)
    return variant.evaluate(eval_callback, f"eval_callback (recommendation: {label})")


class Executor(abc.ABC):
    """Runs the evaluations of one per-layer sweep somewhere; the analyzer writes what comes back.

    A subclass implements :meth:`sweep`, and :meth:`close` when it holds anything between sweeps
    (``analyze`` calls it when it ends, however it ends).

    Example:
        >>> from qa.executors import Executor, evaluate_layer
        >>> class Here(Executor):  # what executor="local" does, written as an executor
        ...     def sweep(self, analyzer, sim, layers, enable, finished):
        ...         for name in layers:
        ...             finished(name, evaluate_layer(sim, analyzer.eval_callback, name, enable))
        >>> Here().close()
    """

    @abc.abstractmethod
    def sweep(self, analyzer: Any, sim: Any, layers: List[str], enable: bool, finished: Finished) -> None:
        """Evaluate ``layers`` (execution order; those a resumed run finished are left out) with
        only each one's quantizers on (``enable``) or off, calling ``finished(layer, score)`` on
        the driver as each score is known, in any order. Raise what a local evaluation raises."""

    def variants(self, analyzer: Any, sim: Any, variants: List[Tuple[str, Any]], finished: Finished) -> bool:
        """Evaluate variants of the fully quantized ``sim`` (``(label, variant QuantSim)``; the
        candidate fixes of :mod:`qa.recommend`), calling ``finished(label, score)`` as each is
        known. Returns False when this executor does not evaluate variants (they run locally);
        the default."""
        return False

    def close(self) -> None:
        """Let go of workers held between sweeps."""


def resolve_executor(executor: Union[None, str, Executor]) -> Optional[Executor]:
    """The executor ``analyze(executor=...)`` names: None for local evaluation.

    Args:
        executor: None or "local" (evaluate here), "ray" (a :class:`RayExecutor` with its defaults),
            or an :class:`Executor` such as ``qa.RayExecutor(address="auto", num_workers=8)``.

    Raises:
        QAValueError: anything else.
        QAError: "ray" while Ray is not installed (the message says how to install it).

    Example:
        >>> resolve_executor("local") is None and resolve_executor(None) is None
        True
    """
    if executor is None or (isinstance(executor, str) and executor.lower() == "local"):
        return None
    if isinstance(executor, str) and executor.lower() == "ray":
        return RayExecutor()
    if isinstance(executor, Executor):
        return executor
    raise QAValueError(f"executor must be None, 'local', 'ray' or a qa.RayExecutor, got {executor!r:.80}")


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise QAError(f"executor='ray' needs Ray, which is not installed ({e}); install it with "
                      f"`{RAY_INSTALL_HINT}` (or `pip install 'ray>=2.9'`)") from None
    return ray


@dataclass
class _Slot:
    """The driver's view of one worker (a Ray actor)."""

    index: int
    actor: Any
    ready: Any  # the ObjectRef of its set-up report; None once it is in
    started: bool = False
    alive: bool = True
    info: Dict[str, Any] = field(default_factory=dict)
    queue: Deque[str] = field(default_factory=collections.deque)
    inflight: Dict[Any, str] = field(default_factory=dict)  # ObjectRef -> layer, in submission order
    layers: int = 0  # evaluated in the current sweep
    seconds: float = 0.0  # spent evaluating in the current sweep

    def describe(self) -> str:
        i = self.info
        where = f"{i.get('host', '?')} ({i.get('ip', '?')}) pid {i.get('pid', '?')}" if i else "not started"
        gpus = i.get("gpus") or []
        threads = f", {i['threads']} torch thread(s)" if i.get("threads") else ""
        return f"worker {self.index} [{where}{', GPU ' + ','.join(map(str, gpus)) if gpus else ''}{threads}]"


class RayExecutor(Executor):
    """Spread the per-layer sweeps of ``analyze`` over the workers of a Ray cluster.

    Each worker (a Ray actor) holds its own copy of the model, adapter and simulation (the
    driver's encodings, never recalibrated), evaluates a contiguous range of layers inside the
    adapter's memoized sweep, and streams each score back; the driver writes them to the same
    files as a local run. The scores are identical to a local run's. A worker that dies has its
    unfinished layers redone elsewhere. See :mod:`qa.executors` for the design.

    What the workers receive is pickled with cloudpickle: the model, ``dummy_input``,
    ``modules_to_ignore`` and ``eval_callback`` (with everything it refers to: its data, too). The
    callback runs on the workers, so it must not depend on driver-only state (open files, its
    own counters). Functions of the script you run are sent by value; classes and functions of
    other modules must be importable on the workers (install them there, or pass
    ``runtime_env={"py_modules": [...]}``). Tensors are unpickled onto the device they were on:
    with ``num_gpus_per_worker=1`` each worker sees its own GPU as ``cuda:0``.

    Args:
        address: the cluster: None (a running ``ray.init`` in this process, else ``RAY_ADDRESS``,
            else a new local cluster), "auto" (the cluster this machine belongs to) or
            "ray://head:10001" (Ray Client). Ignored when this process is already connected.
        num_workers: how many workers; None: as many as the cluster's free CPUs (or GPUs, with
            ``num_gpus_per_worker``) allow, at most one per layer to evaluate.
        num_gpus_per_worker: GPUs each worker reserves (0, 1, or a fraction to share one).
        num_cpus_per_worker: CPUs each worker reserves (default 1; torch on the worker uses
            as many threads).
        runtime_env: Ray runtime environment for the workers (``pip``, ``py_modules``, ``env_vars``).
        max_worker_restarts: how many dead workers are replaced by new ones over one
            ``analyze`` (default: ``num_workers``); past that, the workers left take over.
        start_timeout: seconds to wait for the first worker to be ready before giving up.
        init_kwargs: more keyword arguments for ``ray.init`` when this executor starts Ray.

    Example:
        >>> import qa
        >>> executor = qa.RayExecutor(num_workers=4, num_gpus_per_worker=1)
        >>> executor.num_workers, executor.num_gpus_per_worker
        (4, 1.0)
        >>> result = analyzer.analyze("tf_enhanced", results_dir="out", executor=executor)  # doctest: +SKIP
    """

    def __init__(self, address: Optional[str] = None, num_workers: Optional[int] = None,
                 num_gpus_per_worker: float = 0, *, num_cpus_per_worker: float = 1,
                 runtime_env: Optional[Mapping[str, Any]] = None, max_worker_restarts: Optional[int] = None,
                 start_timeout: float = 600.0, init_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        _require_ray()
        if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) != num_workers
                                        or num_workers < 1):
            raise QAValueError(f"num_workers must be a positive integer or None, got {num_workers!r}")
        for what, value in (("num_gpus_per_worker", num_gpus_per_worker), ("num_cpus_per_worker", num_cpus_per_worker)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise QAValueError(f"{what} must be a number >= 0, got {value!r}")
        if max_worker_restarts is not None and int(max_worker_restarts) < 0:
            raise QAValueError(f"max_worker_restarts must be >= 0, got {max_worker_restarts!r}")
        self.address = address
        self.num_workers = None if num_workers is None else int(num_workers)
        self.num_gpus_per_worker = float(num_gpus_per_worker)
        self.num_cpus_per_worker = float(num_cpus_per_worker)
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.max_worker_restarts = max_worker_restarts
        self.start_timeout = float(start_timeout)
        self.init_kwargs = dict(init_kwargs or {})
        self._pool: Optional[_Pool] = None
        self._started_ray = False

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, num_workers={self.num_workers}, "
                f"num_gpus_per_worker={self.num_gpus_per_worker:g})")

    # -- the Executor contract --

    def sweep(self, analyzer: Any, sim: Any, layers: List[str], enable: bool, finished: Finished) -> None:
        """Evaluate ``layers`` on the cluster's workers (see the class docstring)."""
        if not layers:
            return
        pool = self._pool
        if pool is None or not pool.serves(analyzer, sim):
            self.close_pool()
            pool = self._pool = _Pool(self, analyzer, sim, len(layers))
        pool.sweep(layers, enable, finished)

    def variants(self, analyzer: Any, sim: Any, variants: List[Tuple[str, Any]], finished: Finished) -> bool:
        """Evaluate the variants on the workers: each is sent as the quantizers in which it
        differs from ``sim`` (their settings and encodings, computed here), and rebuilt there
        with :meth:`QuantSim.adopt`. The workers of the sweeps are reused."""
        if not variants:
            return True
        shipped = []
        for label, variant in variants:
            differing = {n: q for n, q in variant.quantizers.items() if _differs(q, sim.quantizers[n])}
            shipped.append((label, differing))
        pool = self._pool
        if pool is None or not pool.serves(analyzer, sim):
            self.close_pool()
            pool = self._pool = _Pool(self, analyzer, sim, len(variants))
        pool.variants(shipped, finished)
        return True

    def close(self) -> None:
        """Stop the workers, and Ray itself when this executor started it."""
        self.close_pool()
        if self._started_ray:
            self._started_ray = False
            try:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
            except Exception as e:  # never mask how the run ended
                log.warning("could not shut Ray down: %s: %s", type(e).__name__, e)

    def close_pool(self) -> None:
        """Stop the workers (the connection to the cluster stays)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close()
            except Exception as e:  # never mask how the run ended
                log.warning("could not stop the Ray workers: %s: %s", type(e).__name__, e)

    # -- helpers --

    def _connect(self) -> Any:
        ray = _require_ray()
        if ray.is_initialized():
            if self.address not in (None, "auto"):
                log.info("Ray is already initialized in this process; address=%r is not used", self.address)
            return ray
        kwargs: Dict[str, Any] = {}
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address:  # a new local cluster: no dashboard, quiet
            kwargs.update(include_dashboard=False, logging_level=logging.WARNING)
        elif not str(address).startswith("ray://"):  # Ray Client forwards only what ray.init would take there
            kwargs.update(logging_level=logging.WARNING)
        kwargs.update(self.init_kwargs)
        if self.runtime_env is not None:
            kwargs["runtime_env"] = self.runtime_env
        _init_with_installed_qa_first(ray, self.address, kwargs)
        self._started_ray = True
        log.info("connected to Ray (%s)", self.address or "a new local cluster")
        return ray

    def _worker_count(self, ray: Any, layers: int) -> int:
        if self.num_workers is not None:
            return max(1, min(self.num_workers, layers))
        free = ray.available_resources()
        fits = [free.get("CPU", 0.0) / self.num_cpus_per_worker if self.num_cpus_per_worker else math.inf]
        if self.num_gpus_per_worker:
            fits.append(free.get("GPU", 0.0) / self.num_gpus_per_worker)
        n = min(fits)
        return max(1, min(layers, int(n) if math.isfinite(n) else layers))


class _Pool:
    """The workers of one (analyzer, simulation): set up once, used by both sweeps."""

    def __init__(self, executor: RayExecutor, analyzer: Any, sim: Any, layers: int) -> None:
        self.executor = executor
        self.ray = ray = executor._connect()
        self._analyzer = weakref.ref(analyzer)
        self._sim = weakref.ref(sim)
        self.sweeps = 0
        blob = _payload(analyzer, sim, ray)
        self.payload = ray.put(blob)
        self.env = _environment(analyzer.adapter.framework)
        count = executor._worker_count(ray, layers)
        total = ray.cluster_resources()
        need = {"CPU": executor.num_cpus_per_worker, "GPU": executor.num_gpus_per_worker}
        short = [f"{v:g} {k}" for k, v in need.items() if v and total.get(k, 0.0) < v]
        if short:
            raise QAError(f"the Ray cluster cannot hold one worker: each asks for {' and '.join(short)}, the "
                          f"cluster has {total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU")
        self.restarts_left = count if executor.max_worker_restarts is None else int(executor.max_worker_restarts)
        self.actor_class = ray.remote(_Worker).options(
            num_cpus=executor.num_cpus_per_worker, num_gpus=executor.num_gpus_per_worker, max_restarts=0,
            max_task_retries=0)
        self.slots: List[_Slot] = []
        for _ in range(count):
            self._spawn()
        log.info("Ray: starting %d worker(s) (%g CPU%s each); the model, callbacks and encodings (%.1f MiB "
                 "pickled) are shipped once", count, executor.num_cpus_per_worker,
                 f", {executor.num_gpus_per_worker:g} GPU" if executor.num_gpus_per_worker else "",
                 len(blob) / 2 ** 20)

    def serves(self, analyzer: Any, sim: Any) -> bool:
        return self._analyzer() is analyzer and self._sim() is sim and any(s.alive for s in self.slots)

    def _spawn(self) -> _Slot:
        actor = self.actor_class.remote(self.payload, self.env)
        slot = _Slot(len(self.slots), actor, actor.ready.remote())
        self.slots.append(slot)
        return slot

    def close(self) -> None:
        for slot in self.slots:
            if slot.alive:
                slot.alive = False
                with contextlib.suppress(Exception):
                    self.ray.kill(slot.actor, no_restart=True)
        self.slots = []

    # -- one sweep --

    def sweep(self, layers: List[str], enable: bool, finished: Finished) -> None:
        self.sweeps += 1
        key = (self.sweeps, enable)
        what = "enabling" if enable else "disabling"
        self._run(layers, lambda slot, name: slot.actor.evaluate.remote(name, key), finished,
                  f"per-layer {what} sweep", f"per-layer {what}")

    def variants(self, variants: List[Tuple[str, Dict[str, Any]]], finished: Finished) -> None:
        """Evaluate each (label, {quantizer name: Quantizer}) as the simulation with those quantizers' settings
        and encodings (:meth:`QuantSim.adopt`), memoized against the fully quantized model."""
        self.sweeps += 1
        key = (self.sweeps, False)
        states = dict(variants)
        self._run([label for label, _ in variants],
                  lambda slot, label: slot.actor.evaluate_variant.remote(label, states[label], key), finished,
                  "recommendation's candidates", "candidate evaluations")

    def _run(self, tasks: List[str], submit: Callable[[_Slot, str], Any], finished: Finished, left: str,
             what: str) -> None:
        """Spread ``tasks`` in contiguous ranges over the workers; ``submit(slot, task)`` sends one."""
        ray = self.ray
        t0 = time.perf_counter()
        live = [s for s in self.slots if s.alive]
        for slot, chunk in zip(live, _chunks(tasks, len(live))):
            slot.queue = collections.deque(chunk)
            slot.layers, slot.seconds = 0, 0.0
        depth = 2  # calls queued on a worker: the next one waits there while one runs
        waited_since = time.monotonic()
        while True:
            for slot in self.slots:
                if slot.alive and slot.started:
                    self._feed(slot, submit, depth)
            inflight = {ref: slot for slot in self.slots if slot.alive for ref in slot.inflight}
            if not inflight and not any(s.queue for s in self.slots):
                break
            setting_up = {s.ready: s for s in self.slots if s.alive and not s.started}
            if not inflight and not setting_up:
                raise QAError(f"every Ray worker died; {sum(len(s.queue) for s in self.slots)} evaluation(s) of "
                              f"the {left} are left (max_worker_restarts is spent)")
            timeout = None
            if not inflight:  # only workers still setting up: they may never be placed
                timeout = max(0.0, self.executor.start_timeout - (time.monotonic() - waited_since))
            ready, _ = ray.wait(list(inflight) + list(setting_up), num_returns=1, timeout=timeout)
            if not ready:
                raise QAError(f"no Ray worker was ready within {self.executor.start_timeout:g} s; the cluster has "
                              f"{ray.available_resources()} free, each worker asks for "
                              f"{self.executor.num_cpus_per_worker:g} CPU and {self.executor.num_gpus_per_worker:g} "
                              f"GPU")
            waitables = list(setting_up) + list(inflight)
            ready = ray.wait(waitables, num_returns=len(waitables), timeout=0)[0] or ready  # all that are in
            for ref in ready:
                if ref in setting_up:
                    self._started(setting_up[ref])
                    waited_since = time.monotonic()
                elif inflight[ref].alive and ref in inflight[ref].inflight:  # not dropped with a dead worker
                    self._result(inflight[ref], ref, finished)
        ends = {slot.actor.end.remote(): slot for slot in self.slots if slot.alive and slot.started}
        for ref, slot in ends.items():  # close each worker's memo; its statistics come back
            with contextlib.suppress(Exception):
                _forward(ray.get(ref, timeout=60), slot)
        self._log_sweep(what, len(tasks), time.perf_counter() - t0)

    def _feed(self, slot: _Slot, submit: Callable[[_Slot, str], Any], depth: int) -> None:
        """Keep ``depth`` calls queued on a worker: from its own range, else the back half of the
        longest range left (a dead or unready worker's range, or a busy one's)."""
        while len(slot.inflight) < depth:
            if not slot.queue:
                victims = [s for s in self.slots if s is not slot and s.queue]
                if not victims:
                    return
                victim = max(victims, key=lambda s: (len(s.queue), not s.alive or not s.started))
                take = len(victim.queue) if not victim.alive else (len(victim.queue) + 1) // 2
                stolen = [victim.queue.pop() for _ in range(take)][::-1]
                slot.queue.extend(stolen)
                log.debug("Ray: %s takes %d layer(s) from %s (%s .. %s)", slot.describe(), take,
                          victim.describe(), stolen[0], stolen[-1])
            name = slot.queue.popleft()
            slot.inflight[submit(slot, name)] = name

    def _started(self, slot: _Slot) -> None:
        try:
            status, value, logs = self.ray.get(slot.ready)
        except self.ray.exceptions.RayError as e:
            self._died(slot, e)
            return
        slot.ready = None
        _forward(logs, slot, setup=True)
        if status != "ok":
            exc, tb = value
            if not isinstance(exc, QAError):
                exc = QAError(f"a Ray worker could not set up its copy of the model ({type(exc).__name__}: {exc}); "
                              f"the classes and functions the model and eval_callback use must be importable on "
                              f"the workers (install them there, or pass RayExecutor(runtime_env={{'py_modules': "
                              f"[...]}}))")
            _add_note(exc, f"(raised while setting up Ray worker {slot.index}; its traceback:)\n{tb}")
            raise exc
        slot.started, slot.info = True, value
        log.info("Ray: %s ready in %.1f s", slot.describe(), value.get("setup_seconds", 0.0))

    def _result(self, slot: _Slot, ref: Any, finished: Finished) -> None:
        name = slot.inflight[ref]
        try:
            status, value, logs = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError:
            raise  # a fault in this module's worker code: not the user's, not the cluster's
        except self.ray.exceptions.RayError as e:
            self._died(slot, e)
            return
        del slot.inflight[ref]
        _forward(logs, slot)
        if status != "ok":
            exc, tb = value
            _add_note(exc, f"(raised on Ray {slot.describe()}; its traceback:)\n{tb}")
            raise exc
        score, seconds = value
        slot.layers += 1
        slot.seconds += seconds
        finished(name, score)

    def _died(self, slot: _Slot, error: BaseException) -> None:
        """A worker is gone: its unfinished layers go back to the front of its range, which a
        replacement takes over (or the other workers, once restarts are spent)."""
        unfinished = list(slot.inflight.values())
        slot.inflight.clear()
        slot.alive = False
        slot.queue.extendleft(reversed(unfinished))
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        left = len(slot.queue)
        if self.restarts_left > 0:
            self.restarts_left -= 1
            new = self._spawn()
            new.queue, slot.queue = slot.queue, collections.deque()
            where = f"a new worker ({new.index}) takes over"
        else:
            where = "the other workers take over"
        log.warning("Ray: %s died (%s: %s); its %d unfinished layer(s) are redone: %s", slot.describe(),
                    type(error).__name__, first[:200], left, where)

    def _log_sweep(self, what: str, tasks: int, seconds: float) -> None:
        used = [s for s in self.slots if s.layers]
        log.info("%s on Ray: %d evaluation(s) on %d worker(s) in %.2f s", what, tasks, len(used), seconds)
        for s in used:
            log.info("  %s: %d evaluation(s), %.2f s evaluating", s.describe(), s.layers, s.seconds)


def _differs(a: Any, b: Any) -> bool:
    """Whether two quantizers differ in settings or encoding (a derived simulation shares the
    encoding objects it did not recompute)."""
    from .sim import QUANTIZER_STATE

    return a.encoding is not b.encoding or any(getattr(a, f) != getattr(b, f) for f in QUANTIZER_STATE
                                               if f != "encoding")


def _chunks(items: List[str], n: int) -> List[List[str]]:
    """``items`` in ``n`` contiguous ranges of nearly equal length (the first ones longer)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


def _forward(records: List[Tuple[int, str]], slot: _Slot, setup: bool = False) -> None:
    """Log a worker's qa log records on the driver (its set-up's at DEBUG: the driver said them)."""
    for level, message in records:
        log.log(logging.DEBUG if setup else level, "Ray worker %d: %s", slot.index, message)


def _payload(analyzer: Any, sim: Any, ray: Any) -> bytes:
    """Everything a worker needs, pickled once (one pickle: ``modules_to_ignore`` given as modules
    keeps referring to the model's own modules)."""
    from ._runs import fingerprint

    source = getattr(analyzer, "_model_args", None)
    if source is None:
        raise QAError("this QuantAnalyzer does not keep the model it was made from; executor='ray' needs it")
    model, dummy_input, modules_to_ignore = source
    framework = analyzer.adapter.framework
    if framework == "onnx" and isinstance(model, (str, os.PathLike)):
        from .adapters.onnx.load import load_model  # the workers may not see this file: send the model itself

        model, _ = load_model(model)
    state = {
        "model": model, "dummy_input": dummy_input, "modules_to_ignore": modules_to_ignore,
        "eval_callback": analyzer.eval_callback, "framework": framework,
        "sim": {"quant_scheme": sim.scheme.value, "default_param_bw": sim.param_bw,
                "default_output_bw": sim.output_bw, "config_file": sim.config, "percentile": sim.percentile,
                "rounding": sim.rounding, "bins": sim.bins, "sentinels": sim.sentinel_mode,
                "aimet_compat": sim.aimet_compat},
        "quantizers": {name: q for name, q in sim.quantizers.items()},
        "prepared": sorted(sim._prepared), "chain": sorted(sim._chain),
        "layers": [layer.name for layer in sim.graph.layers],
        "fingerprint": fingerprint(analyzer.adapter.weights(), sim.quantizers.values(), {}),
        "memoize": analyzer.memoize, "memo_budget": analyzer.memo_memory_budget,
        "log_level": logging.getLogger("qa").getEffectiveLevel(),
    }
    try:
        return ray.cloudpickle.dumps(state)
    except Exception as e:
        raise QAError(f"the model, dummy_input, modules_to_ignore or eval_callback cannot be sent to Ray workers "
                      f"(cloudpickle failed: {type(e).__name__}: {e}); the evaluation callback and what it refers "
                      f"to must be picklable") from e


def _environment(framework: str) -> Dict[str, str]:
    """What the workers' environment must say before the model is unpickled (Keras's backend)."""
    keras = sys.modules.get("keras") if framework == "keras" else None
    return {"KERAS_BACKEND": keras.backend.backend()} if keras is not None else {}


class _Records(logging.Handler):
    """Collects a worker's qa log records, to be sent back with its next answer."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[Tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append((record.levelno, record.getMessage()))

    def take(self) -> List[Tuple[int, str]]:
        out, self.records = self.records, []
        return out


def _failure(e: BaseException) -> Tuple[BaseException, str]:
    """An exception as it travels back to the driver: itself when it pickles (a QACallbackError
    does), else a QAError with its text; plus its traceback on the worker."""
    import pickle

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        exc = pickle.loads(pickle.dumps(e))
    except Exception:
        exc = QAError(f"{type(e).__name__}: {e}")
    return exc, tb


class _Worker:
    """A Ray actor: its own adapter copy and simulation of the driver's model, with the driver's
    encodings; evaluates the layers it is sent. Every answer is ``(status, value, log records)``;
    failures come back as values, so that the driver can tell them from a dead worker."""

    def __init__(self, payload: bytes, env: Optional[Mapping[str, str]] = None) -> None:
        os.environ.update(env or {})  # before anything imports the framework
        self._logs = _Records()
        qa_log = logging.getLogger("qa")
        qa_log.addHandler(self._logs)
        self._memo: Optional[contextlib.ExitStack] = None
        self._memo_key: Any = None
        self._focus: Any = None
        self._error: Optional[Tuple[BaseException, str]] = None
        self._info: Dict[str, Any] = {}
        t = time.perf_counter()
        try:
            self._setup(payload)
        except Exception as e:
            self._error = _failure(e)
        self._info["setup_seconds"] = round(time.perf_counter() - t, 3)

    def _setup(self, payload: bytes) -> None:
        import pickle

        from ._runs import fingerprint
        from .adapters import adapter_class
        from .sim import QuantSim

        state = pickle.loads(payload)
        logging.getLogger("qa").setLevel(state["log_level"])
        with warnings.catch_warnings():  # the driver warned already
            warnings.simplefilter("ignore")
            model = state["model"]  # built as QuantAnalyzer builds it
            adapter = adapter_class(model)(model, state["dummy_input"], modules_to_ignore=state["modules_to_ignore"])
        sim = QuantSim(adapter, **state["sim"])
        layers = [layer.name for layer in sim.graph.layers]
        if layers != state["layers"] or set(sim.quantizers) != set(state["quantizers"]):
            raise QAError("the Ray worker's copy of the model has other layers or quantizers than the driver's: the "
                          "model must be rebuilt the same way from its pickle")
        sim._install(state["quantizers"])  # the driver's settings and encodings, never recalibrated
        prepared = set(state["prepared"])
        sim._prepared = {n: v for n, v in sim._prepared.items() if n in prepared}
        sim._chain = frozenset(state["chain"])
        sim.calibrated = True
        if fingerprint(adapter.weights(), sim.quantizers.values(), {}) != state["fingerprint"]:
            raise QAError("the Ray worker's copy of the model differs from the driver's (its folded weights, "
                          "quantizers or encodings hash differently): was the model changed after the "
                          "QuantAnalyzer was made?")
        self.adapter, self.sim = adapter, sim
        self.eval_callback = state["eval_callback"]
        self.memoize, self.memo_budget = state["memoize"], state["memo_budget"]
        self.everything = sim.enabled
        self._info.update(_where())

    def ready(self) -> Tuple[str, Any, List[Tuple[int, str]]]:
        """("ok", where it runs) once set up, or ("error", (exception, traceback))."""
        if self._error is not None:
            return "error", self._error, self._logs.take()
        return "ok", dict(self._info), self._logs.take()

    def evaluate(self, name: str, key: Any) -> Tuple[str, Any, List[Tuple[int, str]]]:
        """("ok", (score, seconds)) for one layer of the sweep ``key`` = (sweep number, enable)."""
        return self._answer(key, lambda focus: evaluate_layer(self.sim, self.eval_callback, name, key[1], focus,
                                                              self.everything))

    def evaluate_variant(self, label: str, states: Mapping[str, Any], key: Any) -> Tuple[str, Any, List[Tuple[int, str]]]:
        """("ok", (score, seconds)) for the simulation with the quantizers ``states`` (name ->
        Quantizer) as given (the variant ``label`` of a recommendation)."""
        return self._answer(key, lambda focus: evaluate_variant(self.sim.adopt(states), self.eval_callback, label,
                                                                focus, states))

    def _answer(self, key: Any, run: Callable[[Any], float]) -> Tuple[str, Any, List[Tuple[int, str]]]:
        try:
            if self._error is not None:
                raise self._error[0]
            if self._memo_key != key:
                self.end()
                self._memo = contextlib.ExitStack()
                self._focus = (self._memo.enter_context(self.adapter.memoized(self.memo_budget))
                               if self.memoize else None)
                self._memo_key = key
            t = time.perf_counter()
            score = run(self._focus)
            return "ok", (score, time.perf_counter() - t), self._logs.take()
        except Exception as e:
            return "error", _failure(e), self._logs.take()

    def end(self) -> List[Tuple[int, str]]:
        """Close the sweep's memo; the log records since the last answer (the memo's statistics)."""
        memo, self._memo, self._memo_key, self._focus = self._memo, None, None, None
        if memo is not None:
            with contextlib.suppress(Exception):
                memo.close()
        return self._logs.take()


def _where() -> Dict[str, Any]:
    """Where this worker runs: host, IP, pid, GPUs."""
    info: Dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["threads"] = torch.get_num_threads()
    with contextlib.suppress(Exception):
        import ray

        info["ip"] = ray.util.get_node_ip_address()
        info["gpus"] = list(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
    return info


def _init_with_installed_qa_first(ray: Any, address: Optional[str], kwargs: Dict[str, Any]) -> None:
    """``ray.init`` such that workers import the qa this process runs, not a ``qa/`` folder in the
    current directory (a source checkout, where the compiled core and the adapters are not).

    Ray puts the driver's current directory first on the workers' ``sys.path``. Here the folder
    holding the installed qa goes before it (the current directory stays on the path, for the
    user's own modules): this process's directory is listed in the job's driver paths and Ray
    is initialised from the installed qa's folder, so that it is the last path Ray inserts."""
    import qa

    installed = os.path.dirname(os.path.dirname(os.path.abspath(qa.__file__)))
    here = os.getcwd()
    if "job_config" not in kwargs and not str(address or "").startswith("ray://"):
        kwargs["job_config"] = ray.job_config.JobConfig(_py_driver_sys_path=[here])
    try:
        os.chdir(installed)
        ray.init(address=address, **kwargs)
    finally:
        os.chdir(here)
