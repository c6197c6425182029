"""A gradient-flow checkup for any PyTorch model: one call, per-layer numbers, a verdict per
symptom.

:func:`checkup` runs one forward and one backward pass of a model on a batch
(optionally also a few SGD steps on a copy) and returns a :class:`Report`:

* per weight matrix, in the order the layers run (found by hooks, not from
  ``named_parameters()``): gradient norm and its ratio to the last weight matrix,
  weight norm, update-to-weight ratio for a learning rate (not for parameters
  that start at zero, nor for tokens stored as (1, 1, d) tensors), and the share
  of gradient entries that are exactly zero, subnormal or non-finite;
* per activation module: mean, spread, saturated share (sigmoid/tanh-like
  units) and dead share (rectifiers); recurrent cores (``nn.RNN``, ``nn.GRU``,
  ``nn.LSTM``) are measured on their hidden states;
* for sequence inputs: the gradient norm at every input time step;
* a verdict for each symptom the book explains - vanishing, exploding,
  saturation, dead units, underflow, non-finite values and a stalled step -
  with the numbers behind it, the chapter that explains it and the fixes that
  apply, ranked.

The depth profile is judged by its structure, not by its single worst matrix:
each layer/last ratio as the median of five consecutive weight matrices, so
that one or two out of line (a squeeze-excite branch, a pooler) are reported
but do not make a vanishing gradient, with the typical factor per matrix (a
robust fit). Update ratios are those of plain SGD at ``lr``, or of a copy of
the user's own optimizer (Adam's included), stepped on a copy of the model.

The report prints as a deterministic text table (numbers rounded to three
significant figures, so stored notebook outputs reproduce), renders as an HTML
table in a notebook, draws itself (:meth:`Report.plot`) and converts to plain
Python data (:meth:`Report.to_dict`).

Structures that real models use at their standard initialization are not
alarms: weight matrices held at zero gradient by a zero-initialized head,
residual branch or adapter; dead units on a batch too small to tell; fixes the
model already has (normalization, gates, skip connections: read from the pass's
autograd graph, so functional code counts) are not suggested. In-place and
sparse-gradient layers are measured like the others; gradient checkpointing
is followed (a layer that ran but gets no gradient at all, as behind reentrant
checkpointing, is a cut graph), and a ``torch.compile``'d model is measured
through the module it wraps. An error raised by the model or the loss function
reaches the caller unchanged, with a note.

The checkup leaves the model as it found it: parameters, buffers (batch-norm
running statistics), ``.grad`` fields, hooks, training flags and the random
number generators' states are all restored. Gradients are taken with
:func:`torch.autograd.grad` and the user's backward hooks are silenced meanwhile,
so a logger's gradient hooks do not see the checkup's pass.
"""

from __future__ import annotations

import copy
import html
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from . import probes
from .checks import integer, module, number

__all__ = [
    "THRESHOLDS",
    "SYMPTOMS",
    "SATURATING",
    "RECTIFIERS",
    "Verdict",
    "Report",
    "checkup",
    "low_precision_floor",
]

#: Activation kinds: the measurement core's one list (:mod:`vanishing.probes`).
SATURATING, RECTIFIERS = probes.SATURATING, probes.RECTIFIERS

#: The symptoms a report judges, in the order it lists them.
SYMPTOMS = ("vanishing", "exploding", "saturation", "dead", "underflow", "nonfinite", "stalled")

#: Nonzero while a checkup runs: a :class:`vanishing.monitor.Monitor` attached to the same model
#: ignores the checkup's passes (and those of its copies), which are no training steps.
_RUNNING = [0]

#: Largest update-to-weight ratio of a step at which training is called stalled: about a
#: hundredth of the 1e-3 that a healthy SGD or Adam step typically takes.
STALL_RATIO = 1e-5

#: Fewest batch entries (examples times positions) per unit before a unit that is zero on all of
#: them is called dead: on a batch of one example about half of a healthy ReLU layer is zero.
MIN_SEEN_FOR_DEAD = 16

#: Default decision thresholds; :doc:`13_checkup` measures healthy and broken networks to justify
#: them.
THRESHOLDS: dict[str, float] = {
    # smallest gradient-norm ratio (layer / last layer, or first / last time step) still called
    # healthy
    "vanishing_ratio": 1e-2,
    # largest gradient-norm ratio still called healthy
    "exploding_ratio": 1e2,
    # smallest ratio of the forward signal's RMS entering the last weight layer to the largest
    # entering a hidden one, still called healthy
    "forward_ratio": 1e-2,
    # largest update-to-weight ratio std(lr*g)/std(W) still called healthy (one step as large as
    # the weights)
    "update_ratio": 1.0,
    # largest update-to-weight ratio (the largest over the weight matrices) at which a step is
    # called stalled: the weights hardly move
    "stalled_update": STALL_RATIO,
    # activation derivative below this share of its maximum counts as saturated ...
    "saturation_derivative": probes._SATURATED_BELOW,  # the probes' own "saturated"
    # ... and a layer with more than this share of saturated entries is saturated
    "saturated_share": 0.5,
    # share of rectifier units (over all rectifier layers) dead on the whole batch
    "dead_share": 0.5,
    # share of a layer's gradient entries below the dtype's normal range (subnormal or flushed to
    # zero)
    "underflow_share": 0.01,
}

# The chapter that explains each symptom.
_CHAPTERS = {
    "vanishing": "05_activations",
    "exploding": "04_loss_wall",
    "saturation": "05_activations",
    "dead": "05_activations",
    "underflow": "12_hardware",
    "nonfinite": "12_hardware",
    "stalled": "13_checkup",
}

_NORMALIZE = ("normalize pre-activations (batch or layer norm)", "07_normalization")
_ATTENTION = ("keep the attention logits moderate: scale by 1/sqrt(head size), normalize queries "
              "and keys, or initialize their projections smaller", "13_checkup")
# A weight matrix that ran in the forward pass, yet gets no gradient while layers after it do: the
# graph between it and the loss is cut. No vanishing factor does that; an operation does.
_RECONNECT = ("reconnect the graph: no .detach(), torch.no_grad() or .item() on the path to the "
              "loss; torch.utils.checkpoint with use_reentrant=False (the reentrant form passes "
              "no gradient to a block whose inputs do not require grad); or, if the cut is "
              "intended, freeze those layers with requires_grad_(False)", "13_checkup")
_BRANCH_SCALE = ("scale each residual branch down until the update/weight ratio is below 1 "
                 "(about 1/sqrt(depth) for blocks at PyTorch's default scale, 1/depth for "
                 "He-scaled ones), or zero-initialize its last layer")
_RECTIFIER = ("replace sigmoid/tanh by a rectifier (ReLU, GELU)", "05_activations")

# What to try for each symptom, best first: (what to do, chapter). "vanishing in time" is a
# recurrent model's gradient fading across time steps; _fixes adds the entries that depend on the
# model.
_FIXES: dict[str, list[tuple[str, str]]] = {
    "vanishing in time": [
        ("use a gated cell (LSTM/GRU) with a positive forget-gate bias", "09_lstm"),
        ("initialize the recurrent matrix orthogonally (spectral radius near 1)", "04_loss_wall"),
        ("shorten the lag the gradient must cross, or give it a direct path (attention)",
         "09_lstm"),
    ],
    # the initialization first: it sets each layer's factor, and the cheapest change; a residual
    # connection added to a network whose blocks are badly scaled can make it explode (13_checkup)
    "vanishing": [
        ("initialize for the activation (He for rectifiers, Xavier for tanh)", "06_initialization"),
        _NORMALIZE,
        ("add residual connections around the blocks, each branch scaled down (1/sqrt(depth), "
         "or its last layer zero-initialized)", "08_residual"),
    ],
    "exploding": [
        ("clip the gradient norm", "04_loss_wall"),
        ("lower the learning rate", "04_loss_wall"),
        ("shrink the initial weights to variance-preserving scale", "06_initialization"),
        _NORMALIZE,
    ],
    "saturation": [
        _NORMALIZE,
        ("shrink the initial weights (Xavier scale)", "06_initialization"),
        _RECTIFIER,
    ],
    "dead": [
        ("use a leaky rectifier (LeakyReLU, PReLU), whose slope below zero never vanishes",
         "05_activations"),
        ("lower the learning rate (a large step kills units)", "04_loss_wall"),
        ("He initialization with zero biases", "06_initialization"),
        ("normalize pre-activations (batch norm centres every unit)", "07_normalization"),
    ],
    "underflow": [
        ("scale the loss (dynamic loss scaling) before backward", "12_hardware"),
        ("train in bfloat16 (float32's exponent range) instead of float16", "12_hardware"),
        ("keep float32 master weights (mixed precision)", "12_hardware"),
    ],
    "nonfinite": [
        ("find the first layer with non-finite values; lower the learning rate or clip",
         "04_loss_wall"),
        ("compute the loss and its softmax in float32; lower the loss scale", "12_hardware"),
    ],
    "stalled": [
        ("raise the learning rate (or use a warm-up that ends higher)", "13_checkup"),
        ("initialize for the activation so the gradient has a usable size", "06_initialization"),
        ("use an optimizer whose step does not scale with the gradient (Adam, Rprop)",
         "11_beyond_gradient"),
    ],
}


def _fixes(
    symptom: str, *, has: Mapping[str, bool], saturating: bool, in_time: bool
) -> list[tuple[str, str]]:
    """Fixes for ``symptom``, ranked for the kind of model measured and leaving out what it already
    has (see :func:`_has`): (what to do, chapter)."""
    if symptom == "vanishing" and in_time:
        fixes = list(_FIXES["vanishing in time"])
        if has.get("gated"):
            fixes[0] = ("raise the forget-gate bias (b = ln(T / ln 2) keeps half the signal over T "
                        "steps)", "09_lstm")
        return fixes
    fixes = list(_FIXES[symptom])
    if symptom == "vanishing" and saturating:
        fixes.insert(0, _RECTIFIER)
    if symptom == "exploding" and has.get("recurrent"):
        fixes.insert(
            2, ("keep the recurrent matrix's spectral radius near 1", "02_recurrent_model")
        )
    if has.get("residual"):  # it has them. A residual network explodes when its branches are too
        # large, (1 + Var(branch))^depth: scaling them is the structural fix, ranked first (in
        # 13_checkup's patient two, scaled default-init branches are healthy; a lower learning rate
        # does not remove an oversized network's growth)
        fixes = [f for f in fixes if not f[0].startswith("add residual connections")]
        if symptom == "exploding":
            fixes.insert(0, (_BRANCH_SCALE, "08_residual"))
    if symptom == "exploding" and has.get("batchnorm"):
        # batch norm divides out the weights' scale: shrinking them changes nothing downstream
        fixes = [f for f in fixes if not f[0].startswith("shrink the initial weights")]
    if has.get("norm"):
        fixes = [f for f in fixes if f is not _NORMALIZE and not f[0].startswith("normalize")]
    if has.get("adaptive"):  # the optimizer already takes steps of its own size
        fixes = [f for f in fixes if not f[0].startswith("use an optimizer")]
    return fixes


@dataclass
class Verdict:
    """The judgement on one symptom: ``found`` is True, False, or None when it cannot be measured
    here."""

    symptom: str
    found: bool | None
    evidence: str
    chapter: str
    fixes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"FOUND"``, ``"ok"`` or ``"n/a"``."""
        return "n/a" if self.found is None else ("FOUND" if self.found else "ok")

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain Python data."""
        return {"symptom": self.symptom, "found": self.found, "status": self.status,
                "evidence": self.evidence, "chapter": self.chapter,
                "fixes": [{"fix": f, "chapter": c} for f, c in self.fixes]}


def _fmt(x: float | None) -> str:
    """Three significant figures, the same on every machine; ``-`` for a missing value."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.2e}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


@dataclass
class Report:
    """Everything one checkup measured, with its verdicts.

    ``layers``: one dict per weight matrix (input side first); ``activations``:
    one dict per activation module or recurrent core; ``time_profile``: the
    gradient norm at each input time step (None when the input is not a
    sequence); ``verdicts``: symptom -> :class:`Verdict`; ``losses``: the loss
    before and after each of the optional training steps; ``classes``: the number
    of classes C of a classification batch, whose loss at initialization is
    compared with ln C, the cross-entropy of a uniform guess (None otherwise);
    ``optimizer``: the class name of the user's optimizer whose step the update
    ratios measure (None: plain SGD at ``lr``).
    """

    loss: float
    dtype: str
    lr: float
    layers: list[dict[str, Any]]
    activations: list[dict[str, Any]]
    time_profile: list[float] | None
    verdicts: dict[str, Verdict]
    losses: list[float] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    classes: int | None = None
    optimizer: str | None = None

    @property
    def healthy(self) -> bool:
        """True when no symptom was found."""
        return not any(v.found for v in self.verdicts.values())

    @property
    def forward_ratio(self) -> float | None:
        """The forward rule's number: RMS of the signal entering the last weight layer over the
        largest entering a hidden one (None with fewer than two measured inputs)."""
        return _forward_signal(self.layers)[0]

    @property
    def found(self) -> list[str]:
        """The symptoms found, in :data:`SYMPTOMS` order."""
        return [s for s, v in self.verdicts.items() if v.found]

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain Python data (lists, dicts, floats, strings), for programs."""
        return {
            "loss": self.loss,
            "dtype": self.dtype,
            "lr": self.lr,
            "healthy": self.healthy,
            "layers": [dict(r) for r in self.layers],
            "activations": [dict(r) for r in self.activations],
            "time_profile": None if self.time_profile is None else list(self.time_profile),
            "verdicts": {s: v.to_dict() for s, v in self.verdicts.items()},
            "losses": list(self.losses),
            "thresholds": dict(self.thresholds),
            "classes": self.classes,
            "optimizer": self.optimizer,
            "forward_ratio": self.forward_ratio,
        }

    def _loss_text(self) -> str:
        text = f"loss {_fmt(self.loss)}"
        if self.classes is not None:
            chance = math.log(self.classes)
            text += (f" ({_fmt(self.loss / chance)} times ln {self.classes} = {chance:.3g}, "
                     "a uniform guess's cross-entropy)")
        return text

    # ---- text -----------------------------------------------------------------
    def _layer_rows(self) -> list[list[str]]:
        rows = []
        for r in self.layers:
            rows.append([
                r["name"], "x".join(map(str, r["shape"])), _fmt(r["grad_norm"]),
                _fmt(r["grad_ratio"]), _fmt(r["weight_norm"]), _fmt(r["update_ratio"]),
                _share(r["zero"]), _share(r["subnormal"]), str(r["nonfinite"]),
                _share(r.get("flushed")),
            ])
        return rows

    _LAYER_HEAD = [
        "layer", "shape", "|grad|", "ratio", "|W|", "update", "zero", "subn", "nonfin", "flushed",
    ]
    _ACT_HEAD = ["activation", "kind", "mean", "std", "saturated", "dead"]

    def _act_rows(self) -> list[list[str]]:
        return [[a["name"], a["kind"], f"{a['mean']:.3g}", f"{a['std']:.3g}",
                 _share(a["saturated"]), _share(a["dead"])] for a in self.activations]

    @staticmethod
    def _table(head: list[str], rows: list[list[str]]) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
        ]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])

    def summary(self) -> str:
        """The verdicts alone, one line each, with the top-ranked fix for each symptom found."""
        lines = []
        for v in self.verdicts.values():
            lines.append(f"{v.status:>5}  {v.symptom:<10} {v.evidence}")
            if v.found and v.fixes:
                fix, chapter = v.fixes[0]
                lines.append(f"{'':>5}  {'':<10} -> {fix} ({chapter})")
        return "\n".join(lines)

    def __str__(self) -> str:
        step = "SGD" if self.optimizer is None else self.optimizer
        head = f"checkup: {self._loss_text()}, dtype {self.dtype}, {step} lr {self.lr:g}"
        if self.losses:
            head += f", loss after {len(self.losses) - 1} {step} steps {_fmt(self.losses[-1])}"
        verdict = "healthy" if self.healthy else "found: " + ", ".join(self.found)
        parts = [
            head + f" -> {verdict}", "", self.summary(), "",
            self._table(self._LAYER_HEAD, self._layer_rows()),
        ]
        if self.activations:
            parts += ["", self._table(self._ACT_HEAD, self._act_rows())]
        if self.time_profile is not None:
            t = self.time_profile
            parts += ["", f"input gradient by time step: first {_fmt(t[0])}, last {_fmt(t[-1])}, "
                          f"first/last {_fmt(_ratio(t[0], t[-1]))} over {len(t)} steps"]
        return "\n".join(parts)

    __repr__ = __str__

    # ---- HTML -----------------------------------------------------------------
    def _repr_html_(self) -> str:
        colour = {"FOUND": "#D55E00", "ok": "#009E73", "n/a": "#777777"}
        esc = html.escape
        out = [f"<div><p><b>checkup</b>: {esc(self._loss_text())}, dtype {esc(self.dtype)}, "
               f"lr {self.lr:g} &rarr; "
               + ("<b style='color:#009E73'>healthy</b>" if self.healthy
                  else "<b style='color:#D55E00'>found: " + esc(", ".join(self.found)) + "</b>")
               + "</p>"]
        out.append("<table><tr><th>status</th><th>symptom</th><th>evidence</th><th>chapter</th>"
                   "<th>fixes, best first</th></tr>")
        for v in self.verdicts.values():
            fixes = (
                "; ".join(f"{i + 1}. {esc(f)} ({esc(c)})" for i, (f, c) in enumerate(v.fixes))
                if v.found else ""
            )
            out.append(f"<tr><td style='color:{colour[v.status]}'><b>{v.status}</b></td>"
                       f"<td>{esc(v.symptom)}</td><td>{esc(v.evidence)}</td>"
                       f"<td>{esc(v.chapter)}</td><td>{fixes}</td></tr>")
        out.append("</table>")
        for head, rows in (
            (self._LAYER_HEAD, self._layer_rows()), (self._ACT_HEAD, self._act_rows())
        ):
            if not rows:
                continue
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        out.append("</div>")
        return "\n".join(out)

    # ---- figure ---------------------------------------------------------------
    def plot(self, ax: Any = None, *, label: str | None = None, color: str | None = None,
             mark_legend: bool = True) -> Any:
        """Per-layer gradient norms on a log scale; layers behind a symptom are marked.

        Crosses mark layers whose ratio to the last layer crosses the vanishing
        or exploding threshold; open squares on the bottom edge mark layers whose
        gradient is entirely zero or non-finite. ``mark_legend=False`` keeps the
        markers out of the legend (when several reports share one axes).
        Returns the axes.
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from .plots import COLORS, PALETTE

        if ax is None:
            _, ax = plt.subplots()
        g = np.array(
            [r["grad_norm"] if r["grad_norm"] is not None else np.nan for r in self.layers],
            dtype=float,
        )
        idx = np.arange(1, len(g) + 1)
        ok = np.isfinite(g) & (g > 0)
        c = color or PALETTE[0]
        ax.plot(idx[ok], g[ok], marker="o", ms=3, color=c, label=label)
        ax.set_yscale("log")
        lo, hi = self.thresholds["vanishing_ratio"], self.thresholds["exploding_ratio"]
        ratio = np.array(
            [r["grad_ratio"] if r["grad_ratio"] is not None else np.nan for r in self.layers]
        )
        bad = ok & ((ratio < lo) | (ratio > hi))
        if bad.any():
            ax.plot(idx[bad], g[bad], ls="none", marker="x", ms=7, color=COLORS["linear"],
                    label="layer/last ratio beyond threshold" if mark_legend else None)
        dead = ~ok
        if dead.any():
            bottom = g[ok].min() / 10 if ok.any() else 1e-45
            ax.plot(idx[dead], np.full(dead.sum(), bottom), ls="none", marker="s", mfc="none", ms=6,
                    color=COLORS["linear"],
                    label="gradient all zero or non-finite" if mark_legend else None)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("weight matrix (1 = nearest the input)")
        ax.set_ylabel("gradient norm ‖∂L/∂W‖")
        return ax


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b):
        return None
    if b == 0:
        return None if a == 0 else math.inf
    return a / b


def _spread(t: torch.Tensor) -> float:
    """Standard deviation of all entries of ``t`` in float64 (where no float32 or float16 value's
    square underflows); the absolute value for a single entry."""
    t = t.detach().double()
    if t.numel() < 2:
        return float(t.abs().reshape(()))
    return float(t.std())


def _unscale(g: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    """The gradient in float32 with the loss scale divided out (no copy when there is nothing to
    do)."""
    if g is None:
        return None
    g = g.detach().float()
    return g if scale == 1.0 else g / scale


def low_precision_floor(dtype: torch.dtype) -> float:
    """The smallest positive normal number of ``dtype``: gradients below it lose precision or flush
    to zero."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return float(torch.finfo(dtype).tiny)


def _model_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes:
        raise ValueError("model has no floating-point parameters: there is no gradient to measure")
    # A mixed model is judged by its narrowest floating type, where trouble starts first.
    return min(dtypes, key=lambda d: torch.finfo(d).bits)


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


class _Recorder:
    """Hooks that watch one forward pass: the order in which modules with weights first run, and a
    summary of every activation module and recurrent core as the batch passes.

    Activations are measured from their *input*, taken by a pre-hook before the module runs (an
    in-place ``nn.ReLU(inplace=True)`` overwrites it), with the measurement core's one
    implementation of the saturated and dead shares (:mod:`vanishing.probes`).
    """

    def __init__(self, model: nn.Module, threshold: float):
        self.threshold = threshold
        self.names = {m: n for n, m in model.named_modules()}
        self.records: list[dict[str, Any]] = []
        self.order: list[str] = []  # modules with parameters, in the order they first ran
        # mean square of the forward signal entering each module with parameters: [sum, count]
        self.input_ms: dict[str, list[float]] = {}
        # modules that see the model's own input (its scale is the user's data's, not the
        # network's doing): the first with a float input, and any given one of the input tensors
        self.raw: set[str] = set()
        self.input_ids: set[int] = set()
        # gradients at float16/bfloat16 outputs of modules with parameters (autocast): module name
        # -> [subnormal entries, entries, dtype name]
        self.out_grads: dict[str, list] = {}
        self.handles = []
        # set once the model's forward pass has returned: a module that runs again afterwards is
        # gradient checkpointing recomputing it during the backward pass, not a new forward call
        self.closed = False
        self._cache: dict = {}
        self._pending: dict[nn.Module, tuple[float | None, float | None, int]] = {}
        for m in model.modules():
            if isinstance(m, SATURATING + RECTIFIERS):
                self.handles.append(m.register_forward_pre_hook(self._activation_in))
                self.handles.append(m.register_forward_hook(self._activation_out))
            elif isinstance(m, nn.RNNBase):
                self.handles.append(m.register_forward_hook(self._recurrent))
            if any(True for _ in m.parameters(recurse=False)):
                self.handles.append(m.register_forward_pre_hook(self._ran))
                self.handles.append(m.register_forward_hook(self._output))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _ran(self, module: nn.Module, args: tuple) -> None:
        if self.closed:
            return
        name = self.names[module]
        if name not in self.order:
            self.order.append(name)
        x = probes._first_tensor(args)
        if x is not None and (not self.input_ms or id(x) in self.input_ids):
            self.raw.add(name)
        if x is not None and x.numel():
            total = self.input_ms.setdefault(name, [0.0, 0.0])
            total[0] += probes.safe_norm(x) ** 2
            total[1] += x.numel()

    def _output(self, module: nn.Module, args: tuple, output: Any) -> None:
        # under autocast a float32 model computes in float16 or bfloat16: the backward signal is
        # then stored in that format, and can underflow before any float32 weight gradient sees it
        if (self.closed or not isinstance(output, torch.Tensor) or not output.requires_grad
                or output.dtype not in (torch.float16, torch.bfloat16)
                or any(p.dtype == output.dtype for p in module.parameters(recurse=False))):
            return  # not autocast: a float16 model's own gradients are judged on its weights
        name, tiny = self.names[module], torch.finfo(output.dtype).tiny

        def count(grad: torch.Tensor) -> None:
            # entries below the normal range but not zero: stored with fewer significant bits, at
            # the edge of being flushed. (An all-zero gradient is not counted: a zero-initialized
            # head or branch and a dead layer give one legitimately.)
            a = grad.detach().abs()
            total = self.out_grads.setdefault(name, [0, 0, str(grad.dtype).replace("torch.", "")])
            total[0] += int(((a > 0) & (a < tiny)).sum())
            total[1] += a.numel()

        output.register_hook(count)

    def _activation_in(self, module: nn.Module, args: tuple) -> None:
        if (self.closed or not args or not isinstance(args[0], torch.Tensor)
                or not args[0].is_floating_point()):
            return
        x = args[0]
        saturated, dead = probes._activation_shares(module, x, self.threshold, self._cache)
        # how many entries of the batch each unit is seen at: too few, and "zero on the whole
        # batch" says nothing about the unit
        seen = x.numel() // max(x.shape[probes._unit_dim(x)], 1) if x.dim() else 1
        self._pending[module] = (saturated, dead, seen)

    def _activation_out(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module not in self._pending or not isinstance(output, torch.Tensor):
            return
        saturated, dead, seen = self._pending.pop(module)
        out = output.detach().float()
        is_saturating = isinstance(module, SATURATING)
        self.records.append({
            "name": self.names[module],
            "kind": type(module).__name__,
            "mean": float(out.mean()),
            "std": float(out.std()) if out.numel() > 1 else 0.0,
            "saturated": saturated if is_saturating else None,
            "dead": None if is_saturating else dead,
            "seen": seen,
        })

    def _recurrent(self, module: nn.RNNBase, args: tuple, output: Any) -> None:
        states = output[0] if isinstance(output, tuple) else output
        if self.closed or not isinstance(states, torch.Tensor):  # a packed sequence: unmeasured
            return
        h = states.detach().float()
        relu = getattr(module, "nonlinearity", "tanh") == "relu"
        # The last hidden state of an RNN is the nonlinearity's output: tanh' = 1 - h^2,
        # relu' = [h > 0]. LSTM hidden states are o * tanh(c), so 1 - h^2 only bounds their
        # saturation from below.
        self.records.append({
            "name": self.names[module],
            "kind": type(module).__name__ + ("(relu)" if relu else "(tanh)"),
            "mean": float(h.mean()),
            "std": float(h.std()) if h.numel() > 1 else 0.0,
            "saturated": None if relu else float((1 - h * h < self.threshold).float().mean()),
            "dead": probes._all_zero_share(h == 0) if relu else None,
            "seen": h.numel() // max(h.shape[-1], 1),
        })


#: ``time_dim`` resolved for a model with a recurrent core: the profile is taken at the core's
#: own input, along the core's time dimension.
_CORE = "core"


def _time_dim(model: nn.Module, inputs: Any, time_dim: int | str | None) -> int | str | None:
    if time_dim is None:
        return None
    if time_dim == "auto":
        # at the recurrent core's own input: after an embedding, a transpose or any preprocessing
        return _CORE if any(isinstance(m, nn.RNNBase) for m in model.modules()) else None
    x = inputs
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(
            "time_dim needs the inputs to be one floating-point tensor (a batch of sequences)"
        )
    if isinstance(time_dim, bool) or not isinstance(time_dim, int) or not 0 <= time_dim < x.dim():
        raise ValueError(f"time_dim must be 'auto', None or a dimension of the inputs "
                         f"(0..{x.dim() - 1}), got {time_dim!r}")
    return time_dim


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if not isinstance(obj, (list, tuple)):
        return []
    return [t for item in obj for t in _tensors(item)]


class _Pass(NamedTuple):
    """What one forward and backward pass of the checkup measured."""

    loss: torch.Tensor
    grads: dict[str, torch.Tensor | None]  # parameter name -> raw (scaled) gradient
    acts: list[dict[str, Any]]  # activation and recurrent-core records
    xgrad: torch.Tensor | None  # gradient with respect to a sequence input (or the core's input)
    tdim: Any  # its time dimension
    order: list[str]  # modules with parameters, in the order they first ran
    input_rms: dict[str, float]  # module name -> RMS of its forward input
    raw: set[str]  # modules that see the model's own input
    classes: int | None  # C, when the output is (N, C) logits scored against N class indices
    out_grads: dict[str, list]  # module -> subnormal entries, entries, dtype of its output's grad
    skip: bool  # the graph adds a tensor to a weighted transform of itself (see _skip_connection)


def _classes(output: Any, targets: Any) -> int | None:
    """C for a classification batch: (N, C) float logits with C >= 2 and N integer targets."""
    if (isinstance(output, torch.Tensor) and output.is_floating_point() and output.dim() == 2
            and output.shape[1] >= 2 and isinstance(targets, torch.Tensor)
            and not targets.is_floating_point() and targets.shape == output.shape[:1]):
        return int(output.shape[1])
    return None


def _forward_backward(
    model, inputs, targets, loss_fn, recorder_threshold, time_dim, record=True, scale=1.0,
    stash=False,
):
    """One forward and backward pass of ``scale * loss``, as a :class:`_Pass`.

    The gradients come from :func:`torch.autograd.grad`, which leaves ``.grad`` alone; with
    ``stash=True`` from ``backward()`` instead, with every ``.grad`` field saved before and put
    back after (reentrant gradient checkpointing refuses ``autograd.grad``).

    An error raised by the model or by ``loss_fn`` reaches the caller as it was raised, with a
    note saying where the checkup called it.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    recorder = _Recorder(model, recorder_threshold) if record else None
    leaf = None
    probe = {}  # the core's input probe and its time dimension (time_dim == _CORE)
    if time_dim == _CORE:
        core = next(m for m in model.modules() if isinstance(m, nn.RNNBase))

        def add_probe(module: nn.Module, args: tuple) -> tuple | None:
            # x + 0, where the 0 is a leaf: d loss / d probe is d loss / d x at every time step,
            # and the graph back to an embedding stays intact
            x = args[0] if args else None
            if "leaf" in probe or not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return None  # a packed sequence, or a later call: left unprofiled
            probe["leaf"] = torch.zeros_like(x, requires_grad=True)
            probe["dim"] = (1 if module.batch_first else 0) if x.dim() == 3 else 0
            return (x + probe["leaf"], *args[1:])

        probe["handle"] = core.register_forward_pre_hook(add_probe)
    elif time_dim is not None:
        leaf = inputs.detach().clone().requires_grad_(True)
        inputs = leaf
    if recorder is not None:
        recorder.input_ids = {id(t) for t in _tensors(inputs)}
    try:
        # autograd.grad, and the user's backward hooks (a logger's gradient hooks) silenced: the
        # checkup's pass must not feed the user's bookkeeping
        with torch.enable_grad(), probes._user_backward_hooks_off(model):
            try:
                output = probes.call(model, inputs)
                if recorder is not None:
                    recorder.closed = True
            except Exception as err:
                if "not implemented for 'Half'" in str(err):
                    raise ValueError(
                        "the model's float16 forward pass is not supported on this device "
                        f"({err}); run the checkup on CUDA or in bfloat16") from err
                err.add_note("(raised by the model's forward pass on the checkup's batch inputs)")
                raise
            try:
                loss = loss_fn(output, targets)
            except Exception as err:
                err.add_note("(raised by loss_fn(model output, targets) in the checkup)")
                raise
            loss = probes.check_loss(loss)
            skip = _skip_connection(output)
            leaf = probe.get("leaf", leaf)
            wanted = [p for _, p in params] + ([leaf] if leaf is not None else [])
            scaled = loss * scale if scale != 1.0 else loss
            if stash:
                saved = [t.grad for t in wanted]
                try:
                    for t in wanted:
                        t.grad = None
                    scaled.backward()
                    grads = tuple(t.grad for t in wanted)
                finally:
                    for t, g in zip(wanted, saved, strict=True):
                        t.grad = g
            else:
                grads = torch.autograd.grad(scaled, wanted, allow_unused=True)
    finally:
        if recorder is not None:
            recorder.remove()
        if "handle" in probe:
            probe["handle"].remove()
    # grads may end with the input's
    named = {n: g for (n, _), g in zip(params, grads, strict=False)}
    rms = {n: math.sqrt(s / c) for n, (s, c) in recorder.input_ms.items()} if recorder else {}
    return _Pass(
        loss.detach(), named, (recorder.records if recorder else []),
        (grads[-1] if leaf is not None else None), probe.get("dim", time_dim),
        (recorder.order if recorder else []), rms,
        (recorder.raw if recorder else set()), _classes(output, targets),
        (recorder.out_grads if recorder else {}), skip,
    )


#: Autograd nodes that multiply by a weight: a matrix product or a convolution.
_WEIGHT_NODES = ("AddmmBackward", "MmBackward", "BmmBackward", "BaddbmmBackward",
                 "ConvolutionBackward", "LinearBackward", "MkldnnConvolutionBackward")


def _skip_connection(output: Any, budget: int = 50_000) -> bool:
    """Whether the model's autograd graph adds a tensor to a weighted transform of itself.

    That is a residual connection, whatever the code calls it: x + f(x), or P x + f(x) with a
    projection P on the shortcut, where f multiplies by more weights (matrix products,
    convolutions) than the shortcut does. It is found in the graph, so functional code counts
    too; a sum of two paths with equally many weights (a gate times a state, as in a hand-written
    LSTM cell) or with none (x + 0.044715 x³ inside a tanh-approximated GELU) does not. Additions
    are examined nearest the output first; the walk visits at most ``budget`` nodes and answers
    False if it found none by then.
    """
    roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    seen, queue, adds = set(roots), deque(roots), []
    while queue and len(seen) < budget:
        node = queue.popleft()
        if type(node).__name__.startswith("AddBackward"):
            adds.append(node)
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)

    def weights_to(start: Any, limit: int) -> dict[Any, int]:
        """Fewest weight nodes on a path from ``start`` (counted) to each node above it (not
        counted), by a 0-1 breadth-first search."""
        cost, todo = {start: 0}, deque([start])
        while todo and len(cost) < limit:
            node = todo.popleft()
            weighted = type(node).__name__.startswith(_WEIGHT_NODES)
            for nxt, _ in node.next_functions:
                if nxt is None or type(nxt).__name__ == "AccumulateGrad":
                    continue  # a parameter shared by both paths is no shortcut
                c = cost[node] + weighted
                if c < cost.get(nxt, c + 1):
                    cost[nxt] = c
                    (todo.append if weighted else todo.appendleft)(nxt)
        return cost

    left = budget - len(seen)
    for node in adds:
        operands = [n for n, _ in node.next_functions if n is not None]
        if len(operands) != 2 or left <= 0:
            continue
        a, b = (weights_to(n, 4000) for n in operands)
        left -= len(a) + len(b)
        for common in a.keys() & b.keys():
            short, long = sorted((a[common], b[common]))
            if short < long and short <= 1:
                return True
    return False


def eager(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``'d model wraps (same parameters, names without the
    ``_orig_mod.`` prefix), or ``model`` itself: gradient flow is a property of the model's
    mathematics, and measuring it needs hooks that a compiled graph cannot run."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _is_matrix(name: str, p: torch.Tensor) -> bool:
    """A layer's weight matrix, not a token or per-channel vector stored with extra unit
    dimensions (a ViT's ``cls_token`` of shape (1, 1, d), started at std 1e-6, is no layer whose
    update should be compared with its size)."""
    return name.rpartition(".")[2].startswith("weight") or sum(d > 1 for d in p.shape) >= 2


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


#: Optimizers whose step size does not scale with the gradient's size.
_ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
             torch.optim.RAdam, torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.RMSprop,
             torch.optim.Rprop, torch.optim.Adafactor)


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer itself, also when a wrapper (accelerate's) holds it as ``.optimizer``."""
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(inner, torch.optim.LBFGS):
        raise ValueError("optimizer: LBFGS evaluates a closure inside step(), so its gradients "
                         "come after a monitor's hook and a measured step cannot give it one; "
                         "use the checkup with plain SGD's estimate (lr=) instead")
    return inner


def _has(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
         residual: bool = False) -> dict[str, bool]:
    """What the model already has, so that the fixes do not suggest it: recurrent cores, gated ones
    (LSTM/GRU), normalization layers, batch norm (which makes the weights' scale irrelevant), an
    optimizer with steps of its own size, and skip connections (``residual``: found in a pass's
    graph by :func:`_skip_connection`)."""
    mods = list(model.modules())
    return {
        "residual": residual,
        "adaptive": isinstance(optimizer, _ADAPTIVE),
        "recurrent": any(isinstance(m, nn.RNNBase) for m in mods),
        "gated": any(isinstance(m, (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)) for m in mods),
        "norm": any(isinstance(m, _NORMS)
                    or type(m).__name__.endswith(("LayerNorm", "RMSNorm", "GroupNorm"))
                    for m in mods),
        "batchnorm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
    }


def _module_rank(order: list[str]) -> Callable[[str], int]:
    """Rank of a module (by name) in the forward pass. A module that never ran through its own
    call (``nn.MultiheadAttention`` uses its ``out_proj`` weights directly) takes the place of its
    nearest ancestor that did; one with no such ancestor goes last."""
    rank = {name: i for i, name in enumerate(order)}

    def key(module: str) -> int:
        while module not in rank and module:
            module = module.rpartition(".")[0]
        return rank.get(module, len(rank))

    return key


def _forward_order(weights: list[str], order: list[str]) -> list[str]:
    """``weights`` sorted by when their module first ran (see :func:`_module_rank`); a module's
    own parameters keep their registration order."""
    rank = _module_rank(order)
    return sorted(weights, key=lambda w: rank(w.rpartition(".")[0]))


#: A gain no larger than this in every entry counts as a gate that starts (nearly) closed: the
#: layer scale of ConvNeXt and CaiT (1e-6 to 1e-5), besides exact zeros.
GATE_SCALE = 1e-4

#: Names of attention query and key projections (PyTorch, Hugging Face, timm). At initialization
#: attention is nearly uniform and their gradient is small by design, not by depth: it grows as
#: the attention sharpens. They are reported, not judged.
_QUERY_KEY = ("query", "key", "q_proj", "k_proj", "q_lin", "k_lin", "to_q", "to_k", "wq", "wk")


#: Fused projections that compute queries, keys and values in one matrix as three equal blocks in
#: that order along the output, by (module and name of the attention class, projection name):
#: timm's ViT attention, GPT-2's self-attention (a transformers Conv1D, which stores its weight as
#: (in, out)) and MPT's. An allow-list of full class paths, because the same names hold other
#: layouts elsewhere: per head (GPTBigCode's c_attn; timm's TinyViT and EfficientFormer, whose
#: classes are also named Attention), CodeGen's qkv_proj (four blocks, each query, value, key),
#: grouped-query packs of unequal blocks (Phi-3's qkv_proj), or keys and values only (GPT-2's
#: cross-attention). nn.MultiheadAttention's in_proj_weight is recognized by its type.
_FUSED_QKV = {
    ("timm.layers.attention.Attention", "qkv"),
    ("timm.models.vision_transformer.Attention", "qkv"),
    ("transformers.models.gpt2.modeling_gpt2.GPT2Attention", "c_attn"),
    ("transformers.models.mpt.modeling_mpt.MptAttention", "Wqkv"),
}


def _query_key_thirds(modules: Mapping[str, nn.Module], name: str) -> bool | None:
    """How parameter ``name`` holds fused (query, key, value) projections: ``False`` for
    (3 x out, in), ``True`` for transposed (in, 3 x out), ``None`` if it is not one (see
    :data:`_FUSED_QKV`), or if its output does not split into three equal blocks. ``modules``:
    the model's named modules."""
    owner, _, leaf = name.rpartition(".")
    module = modules.get(owner)
    if isinstance(module, nn.MultiheadAttention) and leaf == "in_proj_weight":
        transposed: bool | None = False
    else:
        parent_name, _, projection = owner.rpartition(".")
        parent = modules.get(parent_name)
        if (leaf != "weight" or parent is None or getattr(parent, "is_cross_attention", False)
                or (f"{type(parent).__module__}.{type(parent).__qualname__}", projection)
                not in _FUSED_QKV):
            return None
        transposed = (False if isinstance(module, nn.Linear)
                      else True if type(module).__name__ == "Conv1D" else None)
    weight = getattr(module, leaf)
    if transposed is None or weight.dim() != 2 or weight.shape[int(transposed)] % 3:
        return None
    return transposed


def _thirds(tensor: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key parts, each (out, in), of a fused (query, key, value) weight or its
    gradient (see :func:`_query_key_thirds`)."""
    t = tensor.detach().t() if transposed else tensor.detach()
    e = t.shape[0] // 3
    return t[:e], t[e:2 * e]


def _query_key_part(name: str, part: str, weight: torch.Tensor, grad_norm: float | None,
                   last_norm: float | None) -> dict[str, Any]:
    """A row for the query or key third of a fused projection: judged by the query/key rule
    like a separate projection (the whole matrix stays in the depth profile)."""
    return {"name": f"{name}[{part}]", "shape": list(weight.shape), "query_key": True,
            "weight_norm": probes.safe_norm(weight), "grad_ratio": _ratio(grad_norm, last_norm)}


def _names_query_key(row: dict[str, Any]) -> bool:
    """A weight matrix named as an attention query or key projection, or such a part of a fused
    one."""
    module = row["name"].rpartition(".")[0]
    return (row.get("query_key", False)
            or (module.rpartition(".")[2] in _QUERY_KEY and len(row["shape"]) == 2))


def _is_query_key(row: dict[str, Any]) -> bool:
    """An attention query or key projection at a normal scale: its gain, RMS(W) * sqrt(fan-in),
    at most 3. Much larger weights make the attention saturate instead, and are judged."""
    if not _names_query_key(row):
        return False
    rows_, fan_in = row["shape"]
    gain = row["weight_norm"] / math.sqrt(rows_ * fan_in) * math.sqrt(fan_in)
    return gain <= 3.0


def _containers(model: nn.Module) -> set[str]:
    """Names of the modules that hold submodules with parameters (blocks, stages), as opposed to
    single layers."""
    return {n for n, m in model.named_modules()
            if any(any(True for _ in c.parameters()) for c in m.children())}


def _gated(weak: list[str], gates: list[str], order: list[str], containers: set[str]
           ) -> dict[str, str]:
    """Weight matrices whose tiny or all-zero gradient a gate that starts (nearly) closed explains:
    {matrix: gate}.

    A gate is a parameter that starts at zero or below :data:`GATE_SCALE` (LoRA's B, the last
    batch-norm gain of a residual branch, a zero head, a layer scale) and whose own gradient is
    not zero, so it will open. A gate held by a block (a layer scale, ReZero's gain) scales the
    backward signal to the layers inside that block only; a gate that is a layer of its own (a
    normalization gain, an adapter's B, a head) scales it to the layers that run before it inside
    the module that holds it (its branch, its adapter; for a head, the whole network). Parameters
    held by the model itself (a class token, a position embedding) act at the input and gate
    nothing.
    """
    rank = _module_rank(order)
    out = {}
    for w in weak:
        module = w.rpartition(".")[0]
        for g in gates:
            holder = g.rpartition(".")[0]
            if not holder:
                continue
            parent = holder.rpartition(".")[0]
            if holder in containers:
                gated = module.startswith(holder + ".")
            else:
                gated = ((not parent or module.startswith(parent + "."))
                         and module != holder and rank(module) < rank(holder))
            if gated:
                out[w] = g
                break
    return out


def _check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    out = dict(THRESHOLDS)
    if thresholds is None:
        return out
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"thresholds must be a dict or None, got {type(thresholds).__name__}")
    for k, v in thresholds.items():
        if k not in THRESHOLDS:
            raise ValueError(f"thresholds: unknown key {k!r}; allowed: {', '.join(THRESHOLDS)}")
        out[k] = number(f"thresholds[{k!r}]", v)
    if (
        not out["saturation_derivative"] < 1 or not out["saturated_share"] <= 1
        or not out["dead_share"] <= 1
    ):
        raise ValueError(
            "thresholds: saturation_derivative must be < 1, saturated_share and dead_share <= 1"
        )
    if not out["vanishing_ratio"] < out["exploding_ratio"]:
        raise ValueError("thresholds: vanishing_ratio must be smaller than exploding_ratio")
    return out


def checkup(
    model: nn.Module,
    batch: tuple[Any, Any],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    lr: float = 1e-2,
    steps: int = 0,
    train: bool | None = None,
    time_dim: int | str | None = "auto",
    reference: bool = True,
    loss_scale: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
    optimizer: Any = None,
) -> Report:
    """Measure gradient flow through ``model`` on one ``batch`` and judge each symptom.

    ``batch`` is ``(inputs, targets)``; ``inputs`` is a tensor, a tuple of
    tensors (passed as positional arguments) or a dict (keyword arguments), and
    ``loss_fn(model(inputs), targets)`` must return a scalar. ``lr`` is the
    learning rate the update-to-weight ratios assume (plain SGD: the step is
    ``lr * grad``). ``steps > 0`` also runs that many SGD steps on a copy of the
    model and records the losses. ``train`` temporarily sets train/eval mode
    (``None`` keeps the model's). ``time_dim`` is the time dimension of a
    sequence input whose per-step gradient to profile (``"auto"``: when the
    model contains a recurrent core, the gradient at the core's own input,
    along the core's time dimension, so that it works after an embedding or a
    transpose). For a float16/bfloat16 model, ``reference=True`` repeats
    the pass on a float32 copy to count the gradient entries the low precision
    flushed to zero. ``loss_scale`` multiplies the loss before the backward
    pass, as mixed-precision training does to lift small gradients out of the
    underflow range; zero/subnormal/flushed shares describe the scaled
    gradients the hardware stores, every norm and ratio the unscaled ones.
    ``thresholds`` overrides entries of :data:`THRESHOLDS`. ``optimizer``, the
    user's own optimizer over the model's parameters, replaces plain SGD at
    ``lr``: the update-to-weight ratios (and the ``steps``) are those of a copy
    of it, its state included (Adam's moments), stepped on a copy of the model
    with the measured gradients; the original is not stepped (the copy costs the
    model's and the optimizer state's memory once more).

    The model comes back exactly as it went in: parameters, buffers, ``.grad``,
    hooks, training flags and random-number-generator states.
    """
    module(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "model has no parameters that require grad: there is no gradient to measure"
        )
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    if not callable(loss_fn):
        raise ValueError(
            f"loss_fn must be callable (outputs, targets) -> scalar, got {type(loss_fn).__name__}"
        )
    number("lr", lr, high_ok=False, allowed="a positive finite number")
    integer("steps", steps, 0)
    if train is not None and not isinstance(train, bool):
        raise ValueError(f"train must be True, False or None, got {train!r}")
    if time_dim is not None and time_dim != "auto" and (
        isinstance(time_dim, bool) or not isinstance(time_dim, int)
    ):
        raise ValueError(f"time_dim must be 'auto', None or an int, got {time_dim!r}")
    number("loss_scale", loss_scale, high_ok=False, allowed="a positive finite number")
    th = _check_thresholds(thresholds)
    model = eager(model)
    if optimizer is not None:
        optimizer = torch_optimizer(optimizer)
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in held for p in model.parameters()):
            raise ValueError("optimizer holds none of the model's parameters")
        lr = max(float(g.get("lr", 0.0)) for g in optimizer.param_groups)
    dtype = _model_dtype(model)
    inputs, targets = batch
    tdim = _time_dim(model, inputs, time_dim)
    weights = probes.weight_names(model)
    if not weights:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions) to measure")

    devices = sorted(
        {p.device.index for p in model.parameters() if p.device.type == "cuda"} - {None}
    )
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    _RUNNING[0] += 1
    with torch.random.fork_rng(devices=devices), probes.preserved(model, train):
        try:
            # the float32 reference then sees the same dropout
            try:
                with torch.random.fork_rng(devices=devices):
                    measured = _forward_backward(
                        model, inputs, targets, loss_fn, th["saturation_derivative"], tdim,
                        scale=loss_scale,
                    )
            except RuntimeError as err:
                if "incompatible with .grad()" not in str(err):
                    raise
                # reentrant gradient checkpointing (use_reentrant=True) works only with
                # backward(): the pass again, from the same random state, into stashed .grad
                with torch.random.fork_rng(devices=devices):
                    measured = _forward_backward(
                        model, inputs, targets, loss_fn, th["saturation_derivative"], tdim,
                        scale=loss_scale, stash=True,
                    )
            (loss, grads, acts, xgrad, xdim, order, input_rms, raw_input, classes,
             out_grads, skip) = measured
            flushed = None
            # a sparse gradient (nn.Embedding(sparse=True)) is judged like the dense one it stands
            # for
            raw = {n: g.to_dense() if g is not None and g.is_sparse else g
                   for n, g in grads.items()}
            grads = {n: _unscale(g, loss_scale) for n, g in raw.items()}
            if xgrad is not None:
                xgrad = _unscale(xgrad, loss_scale)
            if reference and dtype in (torch.float16, torch.bfloat16):
                ref = copy.deepcopy(model).float()
                ref_grads = _forward_backward(
                    ref, _cast_floats(inputs, torch.float32), targets, loss_fn,
                    th["saturation_derivative"], None, record=False,
                ).grads
                flushed = {n: ref_grads.get(n) for n in weights}
            losses = (_train_losses(model, optimizer, inputs, targets, loss_fn, lr, steps)
                      if steps else [])
        finally:
            _RUNNING[0] -= 1
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in buffers:
                        b.copy_(buffers[n])

    weights = _forward_order(weights, order)
    params = dict(model.named_parameters())
    # Parameters that start at exactly zero (LoRA's B, a zero-initialized head or residual branch,
    # a batch-norm gain set to zero): no update-to-weight ratio is defined for them, and they hold
    # back the gradient of the layers they gate until their first update.
    zero_init = [n for n, p in params.items()
                 if p.requires_grad and p.is_floating_point() and "bias" not in n.rpartition(".")[2]
                 and not bool(p.detach().ne(0).any())]
    gates = [n for n, p in params.items()
             if p.requires_grad and p.is_floating_point() and "bias" not in n.rpartition(".")[2]
             and p.numel() and float(p.detach().abs().max()) <= GATE_SCALE
             and raw.get(n) is not None and bool(raw[n].ne(0).any())]
    # The update-to-weight ratio of one step, std(step) / std(W), in float64, from the unscaled
    # gradient (not from .grad, which the checkup must not touch, and which a float16 model could
    # not even hold unscaled): plain SGD's step is lr * g; the user's optimizer's is measured.
    judged = [n for n in weights if grads[n] is not None and _is_matrix(n, params[n])
              and _spread(params[n]) > 0 and n not in gates]
    if optimizer is None:
        updates = {n: lr * _spread(grads[n]) / _spread(params[n]) for n in judged}
    else:
        updates = _optimizer_updates(model, optimizer, grads, judged)

    tiny = low_precision_floor(dtype)
    last = next((grads[n] for n in reversed(weights) if grads[n] is not None), None)
    last_norm = probes.safe_norm(last) if last is not None else None
    layers = []
    for n in weights:
        g, w, graw = grads[n], params[n].detach(), raw[n]
        row: dict[str, Any] = {"name": n, "shape": list(w.shape),
                               "ran": n.rpartition(".")[0] in order,
                               "weight_norm": probes.safe_norm(w), "zero_init": n in zero_init,
                               # RMS of the forward signal entering the layer (None: not a float
                               # tensor, e.g. token ids, or the layer did not run, or the layer
                               # sees the model's own input, whose scale is the user's)
                               "input_rms": None if n.rpartition(".")[0] in raw_input
                               else input_rms.get(n.rpartition(".")[0])}
        if g is None:  # the parameter does not influence this loss
            row.update(grad_norm=None, grad_ratio=None, update_ratio=None, zero=None,
                       subnormal=None, nonfinite=0)
        else:
            a = graw.detach().abs()  # what the dtype stores: the scaled gradient
            size = a.numel()
            zeros = int((a == 0).sum())
            norm = probes.safe_norm(g)
            row.update(
                grad_norm=norm,
                grad_ratio=_ratio(norm, last_norm),
                update_ratio=updates.get(n),
                zero=zeros / size,
                subnormal=(int((a < tiny).sum()) - zeros) / size,
                nonfinite=size - int(torch.isfinite(a).sum()),
            )
        out = out_grads.get(n.rpartition(".")[0])
        if out is not None and out[1]:
            # the backward signal at the layer's output, in the low precision autocast chose
            row.update(out_dtype=out[2], out_subnormal=out[0] / out[1])
        if flushed is not None:
            r = flushed[n]
            if g is None or r is None:
                row["flushed"] = None
            else:
                # entries whose (scaled) float32 value lies below the low precision's normal
                # range: the dtype stores them as subnormals with few significant bits, or as zero.
                # Judged on the float32 magnitudes, so rounding differences between the two passes
                # do not count.
                ref = r.detach().abs() * loss_scale
                row["flushed"] = float(((ref > 0) & (ref < tiny)).float().mean())
        layers.append(row)

    modules = dict(model.named_modules())
    parts = []  # the query and key thirds of fused projections
    for n in weights:
        transposed = _query_key_thirds(modules, n)
        if transposed is None or grads[n] is None:
            continue
        for part, w, g in zip(("query", "key"), _thirds(params[n], transposed),
                              _thirds(grads[n], transposed), strict=True):
            parts.append(_query_key_part(n, part, w, probes.safe_norm(g), last_norm))

    time_profile = None
    if xgrad is not None:
        time_profile = [probes.safe_norm(step) for step in xgrad.movedim(xdim, 0)]

    weak = [r["name"] for r in layers
            if r["grad_norm"] == 0 or (r["grad_ratio"] is not None
                                       and r["grad_ratio"] < th["vanishing_ratio"])]
    gated = _gated(weak, gates, order, _containers(model))
    verdicts = _judge(layers, acts, time_profile, float(loss.float()), dtype, th,
                      _has(model, optimizer, residual=skip), gated, lr=lr, opening=gates,
                      qk_parts=parts)
    return Report(loss=float(loss.float()), dtype=str(dtype).replace("torch.", ""), lr=float(lr),
                  optimizer=None if optimizer is None else type(optimizer).__name__,
                  layers=layers, activations=acts, time_profile=time_profile, verdicts=verdicts,
                  losses=losses, thresholds=th, classes=classes)


def _copies(model: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float
            ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A copy of the model with no gradients, and a copy of ``optimizer`` (its state and
    hyperparameters) over the copy's parameters, or plain SGD at ``lr``. The optimizer's step
    hooks (a monitor's) stay with the original."""
    opt: torch.optim.Optimizer
    if optimizer is None:
        clone = copy.deepcopy(model)
        opt = torch.optim.SGD([p for p in clone.parameters() if p.requires_grad], lr=lr)
    else:
        hooks = optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks
        optimizer._optimizer_step_pre_hooks = OrderedDict()
        optimizer._optimizer_step_post_hooks = OrderedDict()
        try:  # one deepcopy: the optimizer's references map onto the copy's parameters
            clone, opt = copy.deepcopy((model, optimizer))
        finally:
            optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks = hooks
    for p in clone.parameters():
        p.grad = None
    return clone, opt


def _optimizer_updates(model, optimizer, grads, names) -> dict[str, float]:
    """std(W_after - W_before) / std(W_before) for each of ``names`` after one step of a copy of
    ``optimizer`` on a copy of ``model`` with the measured gradients."""
    clone, opt = _copies(model, optimizer, 0.0)
    params = dict(clone.named_parameters())
    for n, p in params.items():
        g = grads.get(n)
        p.grad = None if g is None else g.detach().to(p.dtype).clone()
    before = {n: params[n].detach().clone() for n in names}
    opt.step()
    return {n: _spread(params[n].detach() - before[n]) / _spread(before[n]) for n in names}


def _train_losses(model, optimizer, inputs, targets, loss_fn, lr, steps) -> list[float]:
    """Loss before each of ``steps`` steps (of a copy of ``optimizer``, or plain SGD at ``lr``) on
    a copy of the model, and after the last."""
    clone, opt = _copies(model, optimizer, lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        value = loss_fn(probes.call(clone, inputs), targets)
        losses.append(float(value.detach().float()))
        if not math.isfinite(losses[-1]):
            return losses
        value.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(loss_fn(probes.call(clone, inputs), targets).detach().float()))
    return losses


def _neighbour_median(values: list[float]) -> list[float]:
    """Each value replaced by the median of the five consecutive values centred on it in forward
    order (at the ends, the first or last five; all of them when there are fewer; the upper
    median of an even count): a run of one or two values out of line (a squeeze-excite branch's
    two matrices, an embedding) does not survive, a run of three or more does."""
    n, out = len(values), []
    for i in range(n):
        start = max(0, min(i - 2, n - 5))
        window = sorted(values[start:start + 5])
        out.append(window[len(window) // 2])
    return out


def _trend(ratios: list[float]) -> float | None:
    """The gradient's typical factor per weight matrix from the output toward the input: the
    median, over all pairs of layers i < j, of (r_i / r_j) ** (1 / (j - i)) (Theil and Sen's
    robust slope of log r, so that single layers out of line do not set it). None for fewer than
    two positive finite ratios."""
    logs = [(i, math.log(r)) for i, r in enumerate(ratios) if r > 0 and math.isfinite(r)]
    slopes = [(la - lb) / (j - i) for k, (i, la) in enumerate(logs) for j, lb in logs[k + 1:]]
    return math.exp(statistics.median(slopes)) if slopes else None


def _forward_signal(layers: list[dict[str, Any]]
                    ) -> tuple[float | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The forward signal: RMS of what enters the last weight layer (the read-out) over the
    largest entering a hidden one, with those two rows (layers that see the model's own input have
    no input_rms: its scale is the user's). ReLU or GELU with Xavier weights shrink it by about
    1/sqrt(2) a layer while the gradient ratios stay flat near 1: flat, but every layer's gradient
    is tiny (05_activations). Nones with fewer than two measured inputs."""
    fwd = [r for r in layers if r.get("input_rms") is not None]
    if len(fwd) < 2:
        return None, None, None
    top = max(fwd[:-1], key=lambda r: r["input_rms"])
    return _ratio(fwd[-1]["input_rms"], top["input_rms"]), fwd[-1], top


def _judge(layers, acts, time_profile, loss, dtype, th, has, gated, lr=None, opening=(),
           qk_parts=()) -> dict[str, Verdict]:
    """Turn the measurements into one :class:`Verdict` per symptom (also for
    :class:`vanishing.monitor.Monitor`, which passes ``loss=None``: it judges gradients only).
    ``lr`` is the largest learning rate of the step whose update ratios the rows hold;
    ``opening``: parameters at or near zero whose gradient is not (gates that this step opens);
    ``qk_parts``: the query and key thirds of fused projections (:func:`_query_key_part`)."""
    lo, hi = th["vanishing_ratio"], th["exploding_ratio"]
    # the rectifier fix only where sigmoid/tanh-like units are the network's own activation, not
    # one tanh (BERT's pooler) among many GELUs
    saturating = (sum(a["saturated"] is not None for a in acts)
                  > sum(a["dead"] is not None for a in acts))
    # Weight matrices whose all-zero gradient a zero-initialized gate explains (a zero head,
    # residual branch or adapter; see _gated): the standard starting point, not a vanishing
    # gradient; the gradient reaches them after the gate's first update.
    blocked = [r for r in layers if r["name"] in gated]
    # attention query/key matrices: small gradients at init by design (see _QUERY_KEY)
    attention = [r for r in layers if _is_query_key(r) and r not in blocked]
    measured = [r for r in layers
                if r["grad_ratio"] is not None and r not in blocked and r not in attention]
    # query/key matrices large enough to saturate the attention's softmax: judged on their own, as
    # a pair of them would not survive the neighbours' median of the depth profile
    hot = [r for r in measured if _names_query_key(r)] + [
        r for r in qk_parts if r["grad_ratio"] is not None and not _is_query_key(r)
        and r["name"].rpartition("[")[0] not in gated]
    out: dict[str, Verdict] = {}

    def verdict(symptom, found, evidence, *, in_time=False, forward=False, cut=False,
                attention_first=False):
        fixes = (
            _fixes(symptom, has=has, saturating=saturating, in_time=in_time)
            if found else []
        )
        if attention_first:
            fixes.insert(0, _ATTENTION)
        if cut:  # only the graph can be the cause; nothing else is worth trying first
            fixes = [_RECONNECT]
        if forward:  # the forward signal fades at init: the initialization's scale is the cause
            fixes.sort(key=lambda f: f[1] != "06_initialization")
        chapter = "09_lstm" if (symptom == "vanishing" and in_time) else _CHAPTERS[symptom]
        out[symptom] = Verdict(symptom, found, evidence, chapter, fixes)

    # vanishing: in depth (layer / last layer) and, for sequences, in time (first / last step)
    t_ratio = _ratio(time_profile[0], time_profile[-1]) if time_profile else None
    f_ratio, read_out, top = _forward_signal(layers)
    if not measured and t_ratio is None and not any(r["grad_norm"] == 0 for r in layers):
        verdict("vanishing", None, "no layer has a finite gradient ratio to the last layer")
    elif blocked and len(measured) <= 1 and t_ratio is None:
        # a zero head: nothing behind it gets a gradient yet, so nothing can be judged
        verdict("vanishing", None,
                f"{len(blocked)} of {len(layers)} weight matrices get no usable gradient behind "
                f"{gated[blocked[0]['name']]}, which starts at or near zero: the backward signal "
                "cannot be judged at initialization; run the checkup after the first steps, or "
                "watch training with vanishing.monitor")
    else:
        worst = min(measured, key=lambda r: r["grad_ratio"]) if measured else None
        parts, found, in_time, forward = [], False, False, False
        # layers that ran, before the first one with a gradient, and get none at all (None, not
        # zero): cut off from the loss. A layer whose output the loss does not use (a pooler)
        # runs after the layers that feed the loss, so it is not counted.
        first = next((i for i, r in enumerate(layers) if r["grad_norm"] is not None), 0)
        cut = [r for r in layers[:first] if r["grad_norm"] is None and r.get("ran")]
        if cut:
            parts.append(f"the gradient does not reach the first {len(cut)} of {len(layers)} "
                         f"weight matrices at all ({cut[0]['name']} to {cut[-1]['name']}), "
                         "which ran in the forward pass: the graph is cut before the loss")
            found = True
        silent = [r for r in layers if r["grad_norm"] == 0 and r not in blocked
                  and r not in attention]
        if blocked:
            parts.append(f"{len(blocked)} of {len(layers)} weight matrices get a zero or tiny "
                         f"gradient behind a gate that starts at or near zero (first: "
                         f"{gated[blocked[0]['name']]}), as a zero-initialized head, branch, "
                         "adapter or layer scale intends")
        if attention:
            low = min(attention, key=lambda r: r["grad_ratio"] if r["grad_ratio"] is not None
                      else math.inf)
            parts.append(f"{len(attention)} attention query/key matrices at a normal scale not "
                         f"judged (smallest ratio {_fmt(low['grad_ratio'])} at {low['name']}; "
                         "nearly uniform attention keeps their gradient small at initialization)")
        if silent:
            parts.append(f"{len(silent)} of {len(layers)} weight matrices get an all-zero gradient "
                         f"(first: {silent[0]['name']})")
            found = True
        if worst is not None:
            # judged on the structure, not on the single worst matrix: each ratio as the median of
            # five consecutive matrices in forward order, so that one or two
            # matrices out of line (a squeeze-excite branch, a pooler, an embedding) do not make a
            # vanishing gradient, while a run of three or more weak layers does
            ordered = ([r for r in measured if not math.isnan(r["grad_ratio"]) and r not in hot]
                       or [worst])
            smooth = _neighbour_median([r["grad_ratio"] for r in ordered])
            at = min(range(len(smooth)), key=smooth.__getitem__)
            parts.append(f"smallest layer/last gradient ratio {_fmt(smooth[at])} around "
                         f"{ordered[at]['name']} (median of five consecutive matrices; "
                         f"threshold {lo:g})")
            # the robust line's first/last ratio: a steady decay over a short profile, which the
            # median of five would blunt at the input end
            trend = _trend([r["grad_ratio"] for r in ordered])
            span = None if trend is None else trend ** (len(ordered) - 1)
            single = min(ordered, key=lambda r: r["grad_ratio"])
            if single["grad_ratio"] < lo <= smooth[at] and (span is None or span >= lo):
                parts.append(f"smallest single ratio out of line with its neighbours, not a trend: "
                             f"{single['name']} at {_fmt(single['grad_ratio'])}")
            if trend is not None and span is not None:
                parts.append(f"typical factor per weight matrix toward the input {trend:.3g}, "
                             f"{_fmt(span)} over {len(ordered)} matrices")
                found |= span < lo
            found |= smooth[at] < lo
        saturated_attention = False
        if hot:
            low = min(hot, key=lambda r: r["grad_ratio"])
            if low["grad_ratio"] < lo:
                parts.append(f"{len(hot)} attention query/key matrices with large weights (gain "
                             f"above 3), smallest ratio {_fmt(low['grad_ratio'])} at "
                             f"{low['name']}: the attention's softmax saturates")
                found = saturated_attention = True
        if f_ratio is not None and read_out is not None and top is not None:
            parts.append(f"forward signal RMS entering {read_out['name']} / largest entering a "
                         f"hidden layer ({top['name']}) {_fmt(f_ratio)} "
                         f"(threshold {th['forward_ratio']:g})")
            if f_ratio < th["forward_ratio"]:
                found, forward = True, not found
        if t_ratio is not None:
            parts.append(f"first/last time-step gradient ratio {_fmt(t_ratio)} "
                         f"over {len(time_profile)} steps")
            if t_ratio < lo:
                found, in_time = True, True
        verdict("vanishing", found, "; ".join(parts), in_time=in_time, forward=forward,
                cut=bool(cut), attention_first=saturated_attention)

    # exploding: a layer's gradient far above the last one's, or one SGD step moving a layer too
    # far
    finite_ratios = [r for r in measured if math.isfinite(r["grad_ratio"])]
    ups = [r for r in layers if r["update_ratio"] is not None and math.isfinite(r["update_ratio"])]
    if not finite_ratios and not ups:
        verdict("exploding", None, "no finite gradient to compare")
    else:
        parts, found = [], False
        if finite_ratios:
            top = max(finite_ratios, key=lambda r: r["grad_ratio"])
            parts.append(f"largest layer/last ratio {_fmt(top['grad_ratio'])} at {top['name']} "
                         f"(threshold {hi:g})")
            found |= top["grad_ratio"] > hi
        if t_ratio is not None and math.isfinite(t_ratio) and t_ratio > hi:
            parts.append(f"first/last time-step ratio {_fmt(t_ratio)}")
            found = True
        if ups:
            big = max(ups, key=lambda r: r["update_ratio"])
            parts.append(f"largest update/weight {_fmt(big['update_ratio'])} at {big['name']} "
                         f"(threshold {th['update_ratio']:g})")
            found |= big["update_ratio"] > th["update_ratio"]
        verdict("exploding", found, "; ".join(parts))

    # saturation: sigmoid/tanh-like layers (and tanh recurrent cores) with most entries on the flat
    # tails
    sat = [a for a in acts if a["saturated"] is not None]
    if not sat:
        verdict("saturation", None, "no sigmoid/tanh-like units found")
    else:
        worst = max(sat, key=lambda a: a["saturated"])
        verdict("saturation", worst["saturated"] > th["saturated_share"],
                f"largest saturated share {worst['saturated']:.2f} at {worst['name']} "
                f"(threshold {th['saturated_share']:g})")

    # dead units: rectifier units that are zero for the whole batch
    rect = [a for a in acts if a["dead"] is not None]
    few = min((a.get("seen", MIN_SEEN_FOR_DEAD) for a in rect), default=MIN_SEEN_FOR_DEAD)
    if not rect:
        verdict("dead", None, "no rectifier units found")
    elif few < MIN_SEEN_FOR_DEAD:
        verdict("dead", None, f"the batch shows each rectifier unit only {few} times (at least "
                              f"{MIN_SEEN_FOR_DEAD} needed to call a unit that is zero on all of "
                              "them dead)")
    else:
        mean_dead = sum(a["dead"] for a in rect) / len(rect)
        worst = max(rect, key=lambda a: a["dead"])
        verdict("dead", mean_dead > th["dead_share"],
                f"mean dead share {mean_dead:.2f} over {len(rect)} layers, "
                f"largest {worst['dead']:.2f} at {worst['name']} (threshold {th['dead_share']:g})")

    # underflow: gradient entries that the dtype cannot represent as normal numbers
    with_grad = [r for r in layers if r["subnormal"] is not None]
    if not with_grad:
        verdict("underflow", None, "no gradient to inspect")
    else:
        key = "flushed" if any(r.get("flushed") is not None for r in with_grad) else "subnormal"
        worst = max(with_grad, key=lambda r: r.get(key) or 0.0)
        share = worst.get(key) or 0.0
        what = "below the normal range (float32 pass)" if key == "flushed" else "subnormal"
        evidence = (f"largest share {what} {share:.2f} at {worst['name']} "
                    f"in {str(dtype).replace('torch.', '')} (threshold {th['underflow_share']:g})")
        found = share > th["underflow_share"]
        outs = [r for r in layers if r.get("out_subnormal") is not None]
        if outs:
            low = max(outs, key=lambda r: r["out_subnormal"])
            evidence += (f"; backward signal at layer outputs in {low['out_dtype']} (autocast): "
                         f"largest share of entries subnormal {low['out_subnormal']:.2f} at "
                         f"{low['name'].rpartition('.')[0]}")
            found |= low["out_subnormal"] > th["underflow_share"]
        verdict("underflow", found, evidence)

    # non-finite: inf or nan in the loss or any gradient
    bad = [r for r in layers if r["nonfinite"]]
    if (loss is not None and not math.isfinite(loss)) or bad:
        where = (
            f"first at {bad[0]['name']} ({bad[0]['nonfinite']} entries)" if bad
            else "in the loss only"
        )
        verdict("nonfinite", True,
                ("" if loss is None else f"loss {_fmt(loss)}; ")
                + f"{len(bad)} layers with inf/nan gradients, {where}")
    else:
        verdict("nonfinite", False,
                "all gradients finite" if loss is None else "loss and all gradients finite")

    # stalled: the step hardly moves any weight matrix (a learning rate far too small for the
    # gradients' size, or a gradient too small for plain SGD)
    ups = [r["update_ratio"] for r in layers if r["update_ratio"] is not None]
    if lr == 0:  # a warm-up's first step: nothing moves, by design
        verdict("stalled", None, "learning rate 0 at this step")
    elif not ups or not all(math.isfinite(u) for u in ups):
        verdict("stalled", None, "no finite update-to-weight ratio")
    else:
        top = max(ups)
        evidence = (f"largest update/weight ratio of the step {_fmt(top)} "
                    f"(threshold {th['stalled_update']:g})")
        if top < th["stalled_update"] and opening:
            # a zero-initialized head, branch or adapter: its own step is what moves first, and
            # the layers behind it follow once it has opened; no ratio to its size exists
            verdict("stalled", False,
                    f"{evidence}, but {len(opening)} parameters that start at or near zero move "
                    f"on this step (first: {opening[0]}), opening the layers behind them")
        else:
            verdict("stalled", top < th["stalled_update"], evidence)
    return out
