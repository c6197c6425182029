"""Tests of vanishing.monitor: verdicts from the live gradients during training, no side effects."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import vanishing as vg
from vanishing import data, models, monitor

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def batch():
    (x, y), _ = data.digits()
    return x[:128], y[:128]


def _net(**kw) -> nn.Module:
    vg.seed(0)
    args = dict(in_features=64, out_features=10, depth=10, width=64, activation="relu", init="he")
    args.update(kw)
    return models.mlp(**args)


def _train(model, opt, batch, steps, scaler=None):
    x, y = batch
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = CE(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def _hooks(model, opt) -> int:
    return (len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
            + sum(len(m._forward_pre_hooks) for m in model.modules()))


def test_training_is_unchanged_and_symptoms_are_dated(batch):
    plain = _net(activation="sigmoid", init="xavier")
    watched = _net(activation="sigmoid", init="xavier")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, watched)]
    _train(plain, opts[0], batch, 12)
    with monitor.Monitor(watched, opts[1], every=4) as mon:
        _train(watched, opts[1], batch, 12)
    assert _hooks(watched, opts[1]) == 0  # detached on exit
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)  # the monitor changed nothing the training computed
    assert [r["step"] for r in mon.history] == [0, 4, 8] and mon.step == 12
    assert mon.first_seen == {"vanishing": 0}  # a 10-layer sigmoid net: ratio about 1e-5
    assert mon.found == ["vanishing"]
    assert "first seen at step 0" in mon.summary()
    names = [r["name"] for r in mon.history[0]["layers"]]
    assert names[0] == "blocks.0.linear.weight" and names[-1] == "head.weight"
    json.dumps(mon.to_dict())  # plain data for a logger


def test_update_ratio_is_the_step_adam_took(batch):
    model = _net(depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with monitor.Monitor(model, opt, every=1) as mon:
        _train(model, opt, batch, 1)
    for row in mon.history[0]["layers"]:
        w0 = before[row["name"]].double()
        change = dict(model.named_parameters())[row["name"]].detach().double() - w0
        assert row["update_ratio"] == pytest.approx(float(change.std() / w0.std()), rel=1e-6)
    # Adam's first step moves each weight by about lr, whatever the gradient's size
    head = mon.history[0]["layers"][-1]
    assert head["update_ratio"] == pytest.approx(1e-3 / float(before["head.weight"].std()),
                                                 rel=0.05)


def test_stalled_and_healthy(batch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    with monitor.Monitor(model, opt, every=2) as mon:
        _train(model, opt, batch, 3)
    assert mon.first_seen == {"stalled": 0}
    latest = mon.history[-1]["verdicts"]["stalled"]
    assert latest["found"] and latest["fixes"][0]["fix"].startswith("raise the learning rate")
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with monitor.Monitor(model, opt, every=2) as mon:
        _train(model, opt, batch, 3)
    assert mon.first_seen == {} and mon.scalars()["gradflow/stalled"] == 0.0


def test_flat_but_tiny_is_seen_in_the_forward_signal(batch):
    model = _net(depth=50, init="xavier")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with monitor.Monitor(model, opt, every=1) as mon:
        with torch.no_grad():
            model(batch[0])  # an evaluation pass: not part of a training step, not recorded
        _train(model, opt, batch, 1)
    v = mon.history[0]["verdicts"]["vanishing"]
    assert v["found"] and "forward signal" in v["evidence"]
    assert v["fixes"][0]["chapter"] == "06_initialization"


def test_a_residual_network_learns_its_fixes_from_its_first_pass(batch):
    model = _net(depth=30, residual=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with monitor.Monitor(model, opt, every=1) as mon:
        _train(model, opt, batch, 1)
    v = mon.history[0]["verdicts"]["exploding"]
    assert v["found"] and "residual branch" in v["fixes"][0]["fix"], v["fixes"]


def test_nonfinite_gradient_is_found(batch):
    model = _net(depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch
    with monitor.Monitor(model, opt, every=1) as mon:
        CE(model(x), y).backward()
        model.blocks[1].linear.weight.grad[0, 0] = math.nan
        opt.step()
    v = mon.history[0]["verdicts"]["nonfinite"]
    assert v["found"] and "blocks.1.linear.weight" in v["evidence"]


def test_grad_scaler_gradients_are_read_unscaled(batch):
    norms = []
    for scale in (None, 2.0**10):
        model = _net(depth=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
        with monitor.Monitor(model, opt, every=1) as mon:
            _train(model, opt, batch, 1, scaler)
        norms.append([r["grad_norm"] for r in mon.history[0]["layers"]])
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)


def test_trainer_callback_protocol(batch):
    model = _net(depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    class Wrapped:  # what accelerate hands the Trainer: the optimizer held as .optimizer
        optimizer = opt

    cb = monitor.MonitorCallback(every=1)
    cb.on_init_end(None, None, None)  # events it does not need are no-ops
    cb.on_train_begin(None, None, None, model=model, optimizer=Wrapped())
    _train(model, opt, batch, 2)
    logs: dict = {"loss": 2.3}
    cb.on_log(None, None, None, logs=logs)
    assert logs["gradflow/vanishing"] == 0.0 and logs["gradflow/max_update_ratio"] > 0
    cb.on_train_end(None, None, None)
    assert _hooks(model, opt) == 0 and cb.monitor is not None and cb.monitor.step == 2
    with pytest.raises(AttributeError):
        cb.not_an_event  # noqa: B018


def test_errors(batch):
    model = _net(depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="every must be"):
        monitor.Monitor(model, opt, every=0)
    with pytest.raises(ValueError, match="optimizer must be"):
        monitor.Monitor(model, "sgd")
    with pytest.raises(ValueError, match="model must be"):
        monitor.Monitor("net", opt)
    with pytest.raises(ValueError, match=r"thresholds\['stalled_update'\] must be a positive number"):
        monitor.Monitor(model, opt, thresholds={"stalled_update": 0})
    with pytest.raises(ValueError, match="none of the model's weight matrices"):
        monitor.Monitor(model, torch.optim.SGD([model.head.bias], lr=0.1))
    with pytest.raises(ValueError, match="model and optimizer"):
        monitor.MonitorCallback().on_train_begin(None, None, None, model=model)


def test_warm_up_from_zero_is_not_stalled(batch):
    model = _net(depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 2)  # lr 0 at step 0
    x, y = batch
    with monitor.Monitor(model, opt, every=1) as mon:
        for _ in range(3):
            opt.zero_grad()
            CE(model(x), y).backward()
            opt.step()
            warm.step()
    assert mon.history[0]["verdicts"]["stalled"]["found"] is None
    assert "stalled" not in mon.first_seen


def test_zero_gamma_residual_branches_are_not_vanishing_at_step_zero():
    from test_checkup import _resnet  # the torchvision-style blocks with in-place ReLUs

    model = _resnet(zero_last_gamma=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)
    with monitor.Monitor(model, opt, every=1) as mon:
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    v = mon.history[0]["verdicts"]["vanishing"]
    assert not v["found"] and "near zero (first: 3.bn2.weight)" in v["evidence"], v["evidence"]


def test_closure_optimizers_are_refused():
    model = _net(depth=2)
    with pytest.raises(ValueError, match="LBFGS"):
        monitor.Monitor(model, torch.optim.LBFGS(model.parameters()))


def test_a_near_zero_head_is_a_gate_not_an_explosion(batch):
    # as in the checkup: a head at std 2e-5 gets no update ratio, so no "exploding" from it
    model = _net(depth=3)
    torch.nn.init.normal_(model.head.weight, 0.0, 2e-5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor.Monitor(model, opt, every=1) as mon:
        _train(model, opt, batch, 1)
    assert mon.history[0]["layers"][-1]["update_ratio"] is None
    assert not mon.history[0]["verdicts"]["exploding"]["found"]
