"""Watching gradient flow while a model trains: the checkup's verdicts from the live gradients.

:func:`vanishing.checkup.checkup` examines a model at one moment with a pass of its own. A
:class:`Monitor` attaches to the user's optimizer and model instead and, every ``every``
optimizer steps, reads what training computes anyway: each weight matrix's ``.grad`` just before
the step (after a ``GradScaler`` has unscaled it), the change the step made to the weights (so
the update-to-weight ratio is the one the user's optimizer really took, Adam's included), and the
RMS of the forward signal entering each layer during that step's forward pass. No extra forward
or backward pass is run, and nothing the training computes is changed.

It judges the symptoms the checkup judges from gradients and steps alone (vanishing, exploding,
non-finite values and **stalled**, the largest update-to-weight ratio of a step so far below
the ``stalled_update`` threshold that the weights hardly move; the rules are the checkup's,
:func:`vanishing.checkup._judge`). It remembers the step at which each symptom was first seen and
converts to plain data (:meth:`Monitor.to_dict`, :meth:`Monitor.scalars`) for a logger. For the
Hugging Face ``Trainer``, :class:`MonitorCallback` follows its callback protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import checkup as _checkup
from . import probes
from .checks import integer, module

__all__ = ["Monitor", "MonitorCallback"]


class Monitor:
    """Gradient-flow verdicts every ``every`` optimizer steps, from the live gradients.

    ``Monitor(model, optimizer, every=50)`` hooks into ``optimizer.step()`` and into the forward
    passes of ``model``'s layers; use it as a context manager or call :meth:`remove` to detach.
    ``thresholds`` overrides entries of :data:`vanishing.checkup.THRESHOLDS` (``stalled_update``
    is the update-to-weight ratio below which a step counts as stalled). Steps are counted
    from the
    first ``optimizer.step()`` after attaching, starting at 0; a step that a ``GradScaler`` skips
    (non-finite gradients) never reaches the optimizer and is not counted. On a monitored step
    the monitor holds one copy of the weight matrices until the step is taken. Optimizers that
    evaluate a closure inside ``step()`` (``LBFGS``) compute their gradients after the step's
    pre-hook, and are refused. On a ``torch.compile``'d model the monitor's forward hooks run
    eagerly, outside the compiled graph, which then breaks at every layer on every step.
    """

    def __init__(self, model: nn.Module, optimizer: Any, *, every: int = 50,
                 thresholds: Mapping[str, float] | None = None):
        model = _checkup.eager(module(model))
        self.optimizer = _checkup.torch_optimizer(optimizer)
        integer("every", every)
        self.every = every
        self.thresholds = _checkup._check_thresholds(thresholds)
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self._params = {n: p for n, p in model.named_parameters() if id(p) in held}
        self._weights = {n: p for n, p in self._params.items()
                         if p.dim() >= 2 and _checkup._is_matrix(n, p)}
        if not self._weights:
            raise ValueError("the optimizer updates none of the model's weight matrices")
        self._names = {m: n for n, m in model.named_modules()}
        modules = dict(model.named_modules())
        # fused (query, key, value) projections, split for the query/key rule as in the checkup
        self._fused = {n: t for n in self._weights
                       if (t := _checkup._query_key_thirds(modules, n)) is not None}
        self._has = _checkup._has(model, self.optimizer)
        self._skip_known = False  # set by the first training pass (see _model_output)
        self._containers = _checkup._containers(model)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.first_seen: dict[str, int] = {}
        self._order: list[str] = []
        self._input_ms: dict[str, list[float]] = {}
        self._raw: set[str] = set()  # modules that saw the model's own input in this step
        self._ran: set[str] = set()  # modules that ran in this step, with or without grad
        self._input_ids: set[int] = set()
        self._pending: dict[str, Any] | None = None
        # the forward hooks run eagerly also inside a torch.compile'd model (a graph break at
        # each): they keep Python state, which a compiled graph cannot hold
        model_input, forward, output = (torch.compiler.disable(self._model_input),
                                        torch.compiler.disable(self._forward),
                                        torch.compiler.disable(self._model_output))
        self._handles = [
            self.optimizer.register_step_pre_hook(self._before),
            self.optimizer.register_step_post_hook(self._after),
            model.register_forward_pre_hook(model_input, with_kwargs=True),
            model.register_forward_hook(output),
        ] + [m.register_forward_pre_hook(forward) for m in model.modules()
             if any(True for _ in m.parameters(recurse=False))]

    # ---- hooks ---------------------------------------------------------------------------------
    def _model_input(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        if _checkup._RUNNING[0]:  # a checkup's pass on this model or its copy: no training step
            return
        if not self.step % self.every and torch.is_grad_enabled():
            self._input_ids |= {id(t) for t in _checkup._tensors((args, kwargs))}

    def _model_output(self, model: nn.Module, args: tuple, output: Any) -> None:
        # once, from the first training pass's graph: whether the model has skip connections, so
        # that its fixes do not propose them
        if not self._skip_known and torch.is_grad_enabled() and not _checkup._RUNNING[0]:
            self._has["residual"] = _checkup._skip_connection(output)
            self._skip_known = True

    def _forward(self, module: nn.Module, args: tuple) -> None:
        # only the forward passes of monitored steps, and not evaluation passes (no grad) ...
        name = self._names.get(module)
        # not a monitored step, a checkup's pass, or a module of a copy that shares the hook
        if self.step % self.every or _checkup._RUNNING[0] or name is None:
            return
        # ... except that a layer which ran at all fixes its place in the forward order:
        # reentrant checkpointing runs its blocks without grad, and a layer that ran but gets no
        # gradient is cut off from the loss
        if name not in self._ran:  # the module's first call in this step
            self._ran.add(name)
            self._order.append(name)
        if not torch.is_grad_enabled():
            return
        total = self._input_ms.setdefault(name, [0.0, 0.0])
        x = probes._first_tensor(args)
        # the first layer with a float input, and any given the model's own input tensor, see the
        # user's data, whose scale is not the network's doing
        if x is not None and (id(x) in self._input_ids or not self._raw):
            self._raw.add(name)
        if x is not None and x.numel():
            total[0] += probes.safe_norm(x) ** 2
            total[1] += x.numel()

    def _before(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.step % self.every:
            return
        # read the gradients now: an optimizer may change .grad in place during its step. A fused
        # optimizer under a GradScaler gets the scale as an argument and unscales inside step().
        scale = (kwargs or {}).get("grad_scale")
        scale = 1.0 if scale is None else float(scale)
        norms: dict[str, float | None] = {}
        nonfinite: dict[str, int] = {}
        for n, p in self._weights.items():
            g = p.grad
            if g is None:
                norms[n], nonfinite[n] = None, 0
                continue
            g = g.detach().coalesce().values() if g.is_sparse else g.detach()
            norms[n] = probes.safe_norm(g) / scale if g.numel() else 0.0
            nonfinite[n] = g.numel() - int(torch.isfinite(g).sum())
        parts = {}
        for n, t in self._fused.items():
            g = self._weights[n].grad
            if g is not None and not g.is_sparse:
                parts[n] = [probes.safe_norm(third) / scale for third in _checkup._thirds(g, t)]
        # parameters at or near zero whose own gradient is not: gates that will open (_gated)
        gates = [n for n, p in self._params.items()
                 if "bias" not in n.rpartition(".")[2] and p.grad is not None and p.numel()
                 and float(p.detach().abs().max()) <= _checkup.GATE_SCALE
                 and bool(p.grad.ne(0).any())]
        self._pending = {"norms": norms, "nonfinite": nonfinite, "gates": gates, "parts": parts,
                         "lr": max(float(g.get("lr", 1.0)) for g in optimizer.param_groups),
                         "weights": {n: p.detach().clone() for n, p in self._weights.items()}}

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._record(pending)
        self.step += 1

    # ---- judging -------------------------------------------------------------------------------
    def _record(self, pending: dict[str, Any]) -> None:
        rms = {n: math.sqrt(s / c) for n, (s, c) in self._input_ms.items()
               if c and n not in self._raw}
        # parameters frozen since the monitor attached (requires_grad_(False)) are not measured
        names = _checkup._forward_order(
            [n for n, p in self._weights.items() if p.requires_grad], self._order)
        order = self._order
        ran = self._ran
        self._input_ms, self._order, self._raw, self._input_ids = {}, [], set(), set()
        self._ran = set()
        norms, before = pending["norms"], pending["weights"]
        last = next((norms[n] for n in reversed(names) if norms[n] is not None), None)
        rows: list[dict[str, Any]] = []
        for n in names:
            w0 = before[n]
            change = self._weights[n].detach() - w0
            spread = float(w0.double().std()) if w0.numel() > 1 else 0.0
            rows.append({
                "name": n,
                "ran": n.rpartition(".")[0] in ran,
                "shape": list(w0.shape),
                "weight_norm": probes.safe_norm(w0),
                "grad_norm": norms[n],
                "grad_ratio": _checkup._ratio(norms[n], last),
                # none for a gate (near zero): its size says nothing yet, as in the checkup
                "update_ratio": float(change.double().std()) / spread
                if spread > 0 and n not in pending["gates"] else None,
                "input_rms": rms.get(n.rpartition(".")[0]),
                "nonfinite": pending["nonfinite"][n],
                "subnormal": None,  # judged by the checkup on a dedicated pass, not here
            })
        lo = self.thresholds["vanishing_ratio"]
        weak = [r["name"] for r in rows if r["grad_norm"] == 0
                or (r["grad_ratio"] is not None and r["grad_ratio"] < lo)]
        gated = _checkup._gated(weak, pending["gates"], order, self._containers)
        parts = [_checkup._query_key_part(n, part, w, norm, last)
                 for n, norm_pair in pending["parts"].items() if n in names
                 for part, w, norm in zip(("query", "key"), _checkup._thirds(
                     before[n], self._fused[n]), norm_pair, strict=True)]
        verdicts = _checkup._judge(rows, [], None, None, None, self.thresholds, self._has, gated,
                                   lr=pending["lr"], opening=pending["gates"], qk_parts=parts)
        verdicts = {s: verdicts[s] for s in ("vanishing", "exploding", "nonfinite", "stalled")}
        for s, v in verdicts.items():
            if v.found and s not in self.first_seen:
                self.first_seen[s] = self.step
        self.history.append({
            "step": self.step, "layers": rows,
            "verdicts": {s: v.to_dict() for s, v in verdicts.items()},
            "found": [s for s, v in verdicts.items() if v.found],
        })

    # ---- results -------------------------------------------------------------------------------
    @property
    def found(self) -> list[str]:
        """The symptoms found at the latest monitored step."""
        return list(self.history[-1]["found"]) if self.history else []

    def scalars(self) -> dict[str, float]:
        """Flat numbers of the latest monitored step, for a logger (W&B, TensorBoard, the Hugging
        Face ``Trainer``'s log): per-symptom 0/1 flags and the extreme ratios."""
        if not self.history:
            return {}
        rec = self.history[-1]
        out: dict[str, float] = {f"gradflow/{s}": float(bool(v["found"]))
                                 for s, v in rec["verdicts"].items()}
        ratios = [r["grad_ratio"] for r in rec["layers"]
                  if r["grad_ratio"] is not None and math.isfinite(r["grad_ratio"])]
        ups = [r["update_ratio"] for r in rec["layers"]
               if r["update_ratio"] is not None and math.isfinite(r["update_ratio"])]
        if ratios:
            out["gradflow/min_grad_ratio"] = min(ratios)
            out["gradflow/max_grad_ratio"] = max(ratios)
        if ups:
            out["gradflow/max_update_ratio"] = max(ups)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything recorded, as plain Python data: every monitored step's per-layer rows and
        verdicts, and the step at which each symptom was first seen."""
        return {"every": self.every, "steps": self.step, "first_seen": dict(self.first_seen),
                "history": [dict(r) for r in self.history]}

    def summary(self) -> str:
        """One line per symptom: first seen at which step, and the latest evidence."""
        if not self.history:
            return f"no monitored step yet ({self.step} steps taken, every {self.every})"
        rec = self.history[-1]
        lines = [f"gradient flow at step {rec['step']} (monitored every {self.every} steps):"]
        for s, v in rec["verdicts"].items():
            first = (f"first seen at step {self.first_seen[s]}" if s in self.first_seen
                     else "never seen")
            lines.append(f"{v['status']:>5}  {s:<10} {first}; {v['evidence']}")
        return "\n".join(lines)

    __str__ = summary

    def remove(self) -> None:
        """Detach every hook; the record stays readable."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class MonitorCallback:
    """A :class:`Monitor` for the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[
    MonitorCallback(every=50)])``.

    It follows the ``TrainerCallback`` protocol (the ``Trainer`` calls each event method with
    ``model`` and ``optimizer`` keywords): the monitor attaches when training begins and detaches
    when training ends; ``.monitor`` holds the record afterwards. At each log it adds its
    :meth:`Monitor.scalars` to the log's entry in ``trainer.state.log_history`` and to the log
    that the callbacks after it receive. The ``Trainer`` calls its reporting integrations
    (``report_to``: W&B, TensorBoard) *before* the callbacks passed to it, so for those to
    receive the scalars, list the integration after this callback:
    ``Trainer(..., report_to="none", callbacks=[MonitorCallback(), WandbCallback()])``. The
    events this class does not need do nothing.
    """

    def __init__(self, every: int = 50, **monitor_args: Any):
        self.every, self.monitor_args = every, monitor_args
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, *, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise ValueError(
                "MonitorCallback needs the Trainer's model and optimizer at train begin"
            )
        if self.monitor is not None:  # a second run of the same Trainer: start a fresh record
            self.monitor.remove()
        self.monitor = Monitor(model, optimizer, every=self.every, **self.monitor_args)

    def on_log(self, args: Any, state: Any, control: Any, *, logs: dict | None = None,
               **kwargs: Any) -> None:
        if self.monitor is None or logs is None:
            return
        scalars = self.monitor.scalars()
        logs.update(scalars)
        history = getattr(state, "log_history", None)
        if history:
            history[-1].update(scalars)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.remove()

    def __getattr__(self, event: str) -> Any:
        if event.startswith("on_"):  # every other Trainer event: nothing to do
            return lambda *args, **kwargs: None
        raise AttributeError(event)
