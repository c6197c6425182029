"""Tests for vanishing.sweeps: stacked networks agree with the plain loop, on tiny configurations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vanishing import models, probes, sweeps, train

pytestmark = pytest.mark.usefixtures("one_thread")


ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "silu", "linear"]


def _data(n: int = 40, features: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _nets(configs, depth=3, width=6, features=5, classes=3, **kw):
    return [
        sweeps.build_mlp(seed=s, in_features=features, out_features=classes, depth=depth, width=width,
                         activation=a, init=i, **kw)
        for a, i, s in configs
    ]


def _loop_norms(nets, x, y, loss_fn=F.cross_entropy):
    return torch.tensor([list(probes.grad_norms(n, x, y, loss_fn).values()) for n in nets], dtype=torch.float64)


def test_hand_computed_two_layer_linear_networks():
    # One input x, one hidden unit h = a x, two logits o_j = c_j h, no bias; L = cross-entropy with class 0.
    # With g = softmax(o) - (1, 0): dL/dc_j = g_j a x and dL/da = x (g_0 c_0 + g_1 c_1).
    weights = [(0.5, (0.4, -0.2)), (-0.8, (-0.5, 0.7))]
    nets = _nets([("linear", "default", 0), ("linear", "default", 1)], depth=1, width=1, features=1, classes=2)
    for net, (a, c) in zip(nets, weights, strict=True):
        with torch.no_grad():
            net.blocks[0].linear.weight.fill_(a)
            net.head.weight.copy_(torch.tensor(c).view(2, 1))
            for lin in net.linears():
                lin.bias.zero_()
    x, t = torch.tensor([[1.5]]), torch.tensor([0])
    norms = sweeps.grad_norms_batched(sweeps.stack_mlps(nets), x, t)
    expected = []
    for a, c in weights:
        o = [cj * a * 1.5 for cj in c]
        p0 = 1.0 / (1.0 + math.exp(o[1] - o[0]))
        g = (p0 - 1.0, 1.0 - p0)
        expected.append([abs(1.5 * (g[0] * c[0] + g[1] * c[1])), abs(a * 1.5) * math.hypot(*g)])
    torch.testing.assert_close(norms, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_tiny_gradients_do_not_underflow_to_zero():
    # A read-out scaled by 1e-30 makes every hidden gradient entry about 1e-30: its square underflows float32.
    nets = _nets([("tanh", "xavier", 0), ("linear", "he", 1)])
    with torch.no_grad():
        for net in nets:
            net.head.weight.mul_(1e-30)
    x, y = _data()
    norms = sweeps.grad_norms_batched(sweeps.stack_mlps(nets), x, y)
    assert norms.dtype == torch.float64 and bool((norms[:, :-1] > 0).all()) and float(norms[:, :-1].max()) < 1e-25
    torch.testing.assert_close(norms, _loop_norms(nets, x, y), rtol=1e-5, atol=0)


@pytest.mark.parametrize("norm,residual", [(None, False), ("layer", False), (None, True), ("layer", True)])
def test_grad_norms_agree_with_probes(norm, residual):
    configs = [(a, i, s) for a in ACTS for i in ("xavier", "he") for s in (0, 1)]
    configs += [("tanh", i, 3) for i in ("default", "lecun", "orthogonal")]
    nets = _nets(configs, depth=4, width=6, norm=norm, residual=residual)
    x, y = _data()
    stacked = sweeps.stack_mlps(nets)
    norms = sweeps.grad_norms_batched(stacked, x, y)
    assert norms.shape == (len(nets), 5)
    torch.testing.assert_close(norms, _loop_norms(nets, x, y), rtol=1e-5, atol=1e-12)


def test_grad_norms_and_forward_shapes():
    nets = _nets([("tanh", "xavier", 0), ("relu", "he", 1), ("tanh", "xavier", 2)], classes=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, generator=g)
    t = torch.randint(0, 2, (7,), generator=g)
    stacked = sweeps.stack_mlps(nets)
    assert (stacked.size, stacked.depth) == (3, 3)
    assert [(a, b) for a, b, _ in stacked.groups] == [(0, 1), (1, 2), (2, 3)]
    out = stacked.forward(x)
    assert out.shape == (3, 7, 2)
    for k, net in enumerate(nets):
        # A batched product may sum in another order than one network's: a few float32 ulps apart.
        torch.testing.assert_close(out[k], net(x), rtol=1e-5, atol=1e-6)
    per_net = stacked.forward(torch.randn(3, 7, 5, generator=g))  # one batch per network
    assert per_net.shape == (3, 7, 2)
    torch.testing.assert_close(
        sweeps.grad_norms_batched(stacked, x, t), _loop_norms(nets, x, t), rtol=1e-5, atol=0
    )


def test_grad_norms_leave_parameters_and_nets_untouched():
    nets = _nets([("sigmoid", "xavier", 0), ("relu", "he", 1)])
    before = [p.detach().clone() for n in nets for p in n.parameters()]
    stacked = sweeps.stack_mlps(nets)
    params = [p.detach().clone() for p in stacked.parameters()]
    sweeps.grad_norms_batched(stacked, *_data())
    assert all(p.grad is None for p in stacked.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, stacked.parameters(), strict=True))
    with torch.no_grad():
        stacked.weights[0].add_(1.0)  # the stack is a copy: the networks do not move
    assert all(torch.equal(a, b) for a, b in zip(before, [p for n in nets for p in n.parameters()], strict=True))


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=8, optimizer="sgd"),
        dict(batch_size=None, optimizer="sgd"),
        dict(batch_size=8, optimizer="momentum"),
        dict(batch_size=8, optimizer="sgd", clip=0.05),
        dict(batch_size=None, optimizer="momentum", clip=0.5),
    ],
)
def test_train_batched_agrees_with_train(kw):
    configs = [(a, "xavier", s) for a in ("tanh", "sigmoid", "relu", "gelu") for s in (0, 1)]
    x, y = _data(60)
    xt, yt = _data(20, seed=1)
    loop_nets = _nets(configs)
    stacked = sweeps.stack_mlps(_nets(configs))
    hist = sweeps.train_batched(stacked, (x, y), steps=12, lr=0.1, eval_every=4, test_data=(xt, yt),
                                generator=torch.Generator().manual_seed(5), **kw)
    assert hist["step"] == [1, 4, 8, 12]
    assert hist["loss"].shape == hist["acc"].shape == hist["test_loss"].shape == (len(configs), 4)
    assert hist["diverged_at"] == [None] * len(configs)
    for k, net in enumerate(loop_nets):
        ref = train.train(net, (x, y), steps=12, lr=0.1, eval_every=4, test_data=(xt, yt),
                          generator=torch.Generator().manual_seed(5), **kw)
        for key in ("loss", "acc", "test_loss", "test_acc"):
            torch.testing.assert_close(hist[key][k], torch.tensor(ref[key]), rtol=1e-5, atol=1e-6)
    # The trained stacked parameters are the loop's trained parameters.
    copies = _nets(configs)
    stacked.copy_to(copies)
    for a, b in zip(copies, loop_nets, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_train_batched_own_batches_and_grad_norms_agree_with_train():
    # One generator per network: each draws its own minibatches, as its own train.train call would;
    # the gradient norms recorded on those batches (before clipping) match the loop's too.
    configs = [("relu", "he", 0), ("relu", "he", 1), ("tanh", "xavier", 2)]
    x, y = _data(60)
    loop_nets = _nets(configs, norm="layer")
    stacked = sweeps.stack_mlps(_nets(configs, norm="layer"))
    hist = sweeps.train_batched(stacked, (x, y), steps=9, lr=0.1, batch_size=8, optimizer="momentum", clip=0.5,
                                eval_every=3, record_grad_norms=True,
                                generator=[torch.Generator().manual_seed(s) for _, _, s in configs])
    assert hist["grad_norms"].shape == (3, 4, 4) and hist["grad_norms"].dtype == torch.float64
    for k, (net, (_, _, s)) in enumerate(zip(loop_nets, configs, strict=True)):
        ref = train.train(net, (x, y), steps=9, lr=0.1, batch_size=8, optimizer="momentum", clip=0.5, eval_every=3,
                          record_grad_norms=True, generator=torch.Generator().manual_seed(s))
        torch.testing.assert_close(hist["loss"][k], torch.tensor(ref["loss"]), rtol=1e-5, atol=1e-6)
        expected = torch.tensor([list(g.values()) for g in ref["grad_norms"]], dtype=torch.float64)
        torch.testing.assert_close(hist["grad_norms"][k], expected, rtol=1e-5, atol=0)
    # Different generators really give different batches: the first two networks start identical in shape
    # and activation but follow different data, so their curves differ.
    assert not torch.equal(hist["loss"][0], hist["loss"][1])


def test_train_batched_layer_norm_residual():
    configs = [("tanh", "xavier", 0), ("silu", "he", 1)]
    x, t = _data(30, classes=2)
    loop_nets = _nets(configs, classes=2, norm="layer", residual=True)
    stacked = sweeps.stack_mlps(_nets(configs, classes=2, norm="layer", residual=True))
    hist = sweeps.train_batched(stacked, (x, t), steps=6, lr=0.05, batch_size=10, eval_every=3,
                                generator=torch.Generator().manual_seed(0))
    assert hist["loss"].shape == hist["acc"].shape == (2, 3)
    for k, net in enumerate(loop_nets):
        ref = train.train(net, (x, t), steps=6, lr=0.05, batch_size=10, eval_every=3,
                          generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(hist["loss"][k], torch.tensor(ref["loss"]), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(hist["acc"][k], torch.tensor(ref["acc"]))


def test_train_batched_keeps_going_when_one_network_diverges():
    nets = _nets([("linear", "xavier", 0), ("linear", "xavier", 1)], depth=2)
    with torch.no_grad():
        for lin in nets[0].linears():
            lin.weight.mul_(1e3)  # network 0 explodes at this learning rate; network 1 is healthy
    hist = sweeps.train_batched(sweeps.stack_mlps(nets), _data(), steps=30, lr=1.0, batch_size=None,
                                eval_every=10)
    assert isinstance(hist["diverged_at"][0], int) and hist["diverged_at"][1] is None
    assert not math.isfinite(float(hist["loss"][0, -1]))
    assert math.isfinite(float(hist["loss"][1, -1]))
    with pytest.raises(FloatingPointError):  # the loop stops instead
        train.train(nets[0], _data(), steps=30, lr=1.0, batch_size=None)


def test_build_mlp_is_seeded_and_leaves_global_rng_alone():
    kw = dict(in_features=4, out_features=2, depth=2, width=3, activation="tanh", init="orthogonal")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    net = sweeps.build_mlp(seed=9, **kw)
    assert torch.equal(torch.rand(1), expected_next)
    torch.manual_seed(9)
    ref = models.mlp(**kw)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref.parameters(), strict=True))


def test_stack_mlps_errors():
    x = _nets([("tanh", "xavier", 0)])[0]
    with pytest.raises(ValueError, match="nets"):
        sweeps.stack_mlps([])
    with pytest.raises(ValueError, match="nets"):
        sweeps.stack_mlps(x)
    with pytest.raises(ValueError, match=r"nets\[1\]"):
        sweeps.stack_mlps([x, torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match=r"nets\[1\] differs"):
        sweeps.stack_mlps([x, *_nets([("tanh", "xavier", 0)], depth=4)])
    with pytest.raises(ValueError, match="norm"):
        sweeps.stack_mlps(_nets([("tanh", "xavier", 0)], norm="batch"))


def test_grad_norms_and_forward_errors():
    stacked = sweeps.stack_mlps(_nets([("tanh", "xavier", 0), ("relu", "he", 0)]))
    x, y = _data()
    with pytest.raises(ValueError, match="stacked"):
        sweeps.grad_norms_batched(object(), x, y)
    with pytest.raises(ValueError, match="inputs"):
        sweeps.grad_norms_batched(stacked, torch.randn(40, 4), y)
    with pytest.raises(ValueError, match="targets"):
        sweeps.grad_norms_batched(stacked, x, y[:-1])
    with pytest.raises(ValueError, match="long"):
        sweeps.grad_norms_batched(stacked, x, y.float())
    with pytest.raises(ValueError, match="inputs"):
        stacked.forward(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="nets"):
        stacked.copy_to(_nets([("tanh", "xavier", 0)]))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(steps=0), "steps"),
        (dict(eval_every=0), "eval_every"),
        (dict(lr=0.0), "lr"),
        (dict(lr=True), "lr"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(clip=-1.0), "clip"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=41), "batch_size"),
        (dict(generator=3), "generator"),
        (dict(generator=[torch.Generator(), torch.Generator()]), "generator"),
        (dict(test_data=(1, 2, 3)), "test_data"),
    ],
)
def test_train_batched_errors(kw, match):
    stacked = sweeps.stack_mlps(_nets([("tanh", "xavier", 0)]))
    args = dict(steps=2, lr=0.1, batch_size=8) | kw
    with pytest.raises(ValueError, match=match):
        sweeps.train_batched(stacked, _data(), **args)
    with pytest.raises(ValueError, match="data"):
        sweeps.train_batched(stacked, _data()[0], steps=2, lr=0.1)


def test_build_mlp_rejects_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        sweeps.build_mlp(seed=-1, in_features=2, out_features=2, depth=1, width=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stacked_runs_on_cuda():
    nets = _nets([("tanh", "xavier", 0), ("relu", "he", 1)])
    x, y = _data()
    stacked = sweeps.stack_mlps(nets).to("cuda")
    torch.testing.assert_close(sweeps.grad_norms_batched(stacked, x, y), _loop_norms(nets, x, y), rtol=1e-4, atol=0)
    hist = sweeps.train_batched(stacked, (x, y), steps=3, lr=0.1, batch_size=8)
    assert hist["loss"].device.type == "cpu"


def test_histories_split_a_batched_record_like_train():
    configs = [("tanh", "xavier", 0), ("relu", "he", 1)]
    x, y = _data(40)
    loop_nets = _nets(configs)
    hist = sweeps.train_batched(sweeps.stack_mlps(_nets(configs)), (x, y), steps=4, lr=0.1, batch_size=8,
                                eval_every=2, test_data=(x[:10], y[:10]), record_grad_norms=True,
                                generator=torch.Generator().manual_seed(1))
    split = sweeps.histories(hist)
    assert len(split) == 2
    for net, one in zip(loop_nets, split, strict=True):
        ref = train.train(net, (x, y), steps=4, lr=0.1, batch_size=8, eval_every=2, test_data=(x[:10], y[:10]),
                          record_grad_norms=True, generator=torch.Generator().manual_seed(1))
        assert one["step"] == ref["step"] == [1, 2, 4]
        assert set(one) == set(ref) | {"diverged_at"}
        assert all(isinstance(v, float) for v in one["test_acc"])
        assert one["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        expected = [list(g.values()) for g in ref["grad_norms"]]
        torch.testing.assert_close(torch.tensor(one["grad_norms"]), torch.tensor(expected), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="history"):
        sweeps.histories({"loss": []})


def test_train_many_gives_each_network_its_own_train_run():
    # Two architectures interleaved, a residual network of the same shape as plain ones, and networks a stack
    # would not reproduce (batch norm, a forward hook, a frozen parameter, a gradient hook on a parameter, a
    # parametrized layer, a subclass with its own forward, a module that is no MLP): each network's history and
    # trained weights must be what its own train.train call gives.
    x, y = _data(60)
    specs = [(2, None, "tanh", 0, False), (3, None, "relu", 1, False), (2, "batch", "relu", 2, False),
             (2, None, "relu", 3, False), (3, "layer", "tanh", 4, False), (2, None, "relu", 5, True),
             (2, None, "tanh", 6, False), (2, None, "tanh", 7, False), (2, None, "tanh", 8, False),
             (2, None, "tanh", 9, False)]

    class Doubled(models.MLP):
        def forward(self, x):
            return 2 * super().forward(x)

    def build():
        nets = [sweeps.build_mlp(seed=s, in_features=5, out_features=3, depth=d, width=6, activation=a,
                                 init="xavier", norm=n, residual=r) for d, n, a, s, r in specs]
        nets[6].blocks[0].register_forward_hook(lambda m, i, o: 2 * o)  # a stack would skip the hook
        nets[7].blocks[1].linear.weight.requires_grad_(False)  # ... train the frozen weight
        nets[8].head.weight.register_hook(lambda g: 3 * g)  # ... skip the gradient hook
        torch.nn.utils.parametrizations.weight_norm(nets[9].head)  # ... and not train the parametrization
        doubled = sweeps.build_mlp(seed=10, in_features=5, out_features=3, depth=2, width=6, activation="tanh")
        doubled.__class__ = Doubled
        torch.manual_seed(8)
        return [*nets, doubled, torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))]

    nets, loop_nets = build(), build()
    kw = dict(steps=6, lr=0.1, batch_size=8, optimizer="momentum", eval_every=3, test_data=(x[:10], y[:10]))
    seeds = [10 + i for i in range(len(nets))]
    out = sweeps.train_many(nets, (x, y), seeds=seeds, **kw)
    assert len(out) == len(nets)
    for net, ref_net, one, seed in zip(nets, loop_nets, out, seeds, strict=True):
        ref = train.train(ref_net, (x, y), generator=torch.Generator().manual_seed(seed), **kw)
        assert one["diverged_at"] is None and one["step"] == ref["step"] == [1, 3, 6]
        assert one["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-6)
        assert one["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_train_many_records_where_a_network_diverges():
    def build():
        nets = [sweeps.build_mlp(seed=s, in_features=5, out_features=3, depth=2, width=6, activation="linear",
                                 init="xavier", norm=n) for s, n in ((0, None), (1, None), (2, "batch"))]
        with torch.no_grad():  # nets[0] and nets[2] explode at this learning rate; nets[1] is healthy
            for lin in nets[0].linears():
                lin.weight.mul_(1e3)
            nets[2].linears()[-1].weight.mul_(1e20)  # batch norm would undo a scaling of the hidden layers
        return nets

    kw = dict(steps=30, lr=1.0, batch_size=None, eval_every=10)
    out = sweeps.train_many(build(), _data(), seeds=[0, 1, 2], **kw)
    ref = build()
    for i in (0, 2):  # the step train.train stops at, stacked or alone
        with pytest.raises(train.Diverged) as err:
            train.train(ref[i], _data(), **kw)
        assert out[i]["diverged_at"] == err.value.step
    assert out[1]["diverged_at"] is None  # the healthy network shares the diverging one's stack, untouched
    assert out[1]["loss"] == pytest.approx(train.train(ref[1], _data(), **kw)["loss"], rel=1e-5)
    assert len(out[0]["loss"]) == 4 and not math.isfinite(out[0]["loss"][-1])  # the stack goes on recording
    # trained alone, the record stops at the last evaluation before the divergence
    assert out[2]["step"] == [t for t in [1, 10, 20, 30] if t < out[2]["diverged_at"]] == [1]


def test_diverged_pickles_with_its_step_and_record():
    import pickle

    sent = train.Diverged("loss became nan", 3, {"step": [1]})
    sent.add_note("seed 4")
    err = pickle.loads(pickle.dumps(sent))
    assert isinstance(err, FloatingPointError) and (str(err), err.step, err.history) == ("loss became nan", 3,
                                                                                         {"step": [1]})
    assert err.__notes__ == ["seed 4"]


@pytest.mark.parametrize(
    "args,match",
    [
        (dict(seeds=[0, 1]), "seeds"),
        (dict(seeds=[0, 1, -1]), r"seeds\[2\]"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(nets=[object()]), r"nets\[2\] must be a torch.nn.Module"),
        (dict(nets=torch.nn.Linear(5, 3)), "nets"),
        (dict(nets="twice"), r"nets\[2\] shares parameters with nets\[0\]"),
        (dict(nets="wide"), r"nets\[2\] takes 7 input features, data has 5"),
        (dict(nets="double"), r"nets\[2\] is torch.float64 on cpu, data's inputs torch.float32"),
        (dict(test_data=(1, 2)), "test_data"),
    ],
)
def test_train_many_errors_come_before_any_training(args, match):
    # Stacks train first and lone networks (batch norm) last, so the faulty entry is a batch-normalized
    # network after a healthy stacked one and a healthy lone one: no network may have moved when it raises.
    nets = [*_nets([("relu", "he", 1)]), *_nets([("tanh", "xavier", 0)], norm="batch")]
    before = [[p.detach().clone() for p in net.parameters()] for net in nets]
    third = {"twice": [nets[0]], "wide": _nets([("tanh", "xavier", 2)], norm="batch", features=7),
             "double": [_nets([("tanh", "xavier", 2)], norm="batch")[0].double()]}
    if isinstance(args.get("nets"), str):
        args = {"nets": [*nets, *third[args["nets"]]]}
    elif isinstance(args.get("nets"), list):
        args = {"nets": [*nets, *args["nets"]]}
    # batch_size 8 fits the 40-row data: without the faulty entry every network would train
    kw = dict(nets=[*nets, *_nets([("tanh", "xavier", 2)], norm="batch")], seeds=[0, 1, 2], steps=2, lr=0.1,
              batch_size=8) | args
    with pytest.raises(ValueError, match=match):
        sweeps.train_many(kw.pop("nets"), _data(), **kw)
    for net, saved in zip(nets, before, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), saved, strict=True))


def test_train_many_sends_global_hooks_and_shiftless_layer_norms_alone():
    # A layer norm without shifts cannot be stacked (stack_mlps refuses it by name), and a global module hook
    # changes every network's forward pass, which a stack would skip: both must train as train.train trains.
    x, y = _data(60)

    def build():
        shiftless, plain = _nets([("tanh", "xavier", 0), ("relu", "he", 1)], norm="layer")
        for block in shiftless.blocks:
            block.norm = torch.nn.LayerNorm(6, bias=False)
        return [shiftless, _nets([("relu", "he", 1)])[0]]

    with pytest.raises(ValueError, match=r"nets\[0\] has a LayerNorm without gains or shifts"):
        sweeps.stack_mlps(build()[:1])
    kw = dict(steps=4, lr=0.1, batch_size=8, eval_every=2)
    nets, refs = build(), build()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: 1.5 * o if isinstance(m, torch.nn.Linear) else None)
    try:
        out = sweeps.train_many(nets, (x, y), seeds=[0, 1], **kw)
        for net, ref_net, one, seed in zip(nets, refs, out, [0, 1], strict=True):
            ref = train.train(ref_net, (x, y), generator=torch.Generator().manual_seed(seed), **kw)
            assert one["loss"] == pytest.approx(ref["loss"], rel=1e-6)
            for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    finally:
        handle.remove()
