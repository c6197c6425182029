"""Tests for vanishing.rbm: RBM conditionals, CD-k, exact partition functions, DBN bound and errors."""

import itertools
import math

import pytest
import torch

from vanishing import data, models, rbm


def _tiny(seed: int = 0) -> rbm.RBM:
    g = torch.Generator().manual_seed(seed)
    r = rbm.RBM(3, 2, init_std=0.7, generator=g)
    with torch.no_grad():
        r.b_v.copy_(torch.tensor([0.1, -0.2, 0.3]))
        r.b_h.copy_(torch.tensor([-0.4, 0.5]))
    return r


def _brute_log_z(r: rbm.RBM) -> float:
    terms = []
    for v in itertools.product((0.0, 1.0), repeat=r.visible):
        for h in itertools.product((0.0, 1.0), repeat=r.hidden):
            vt, ht = torch.tensor(v), torch.tensor(h)
            terms.append(float(vt @ r.b_v + ht @ r.b_h + ht @ r.W @ vt))
    return math.log(sum(math.exp(t) for t in terms))


def test_conditionals_by_hand():
    r = _tiny()
    v = torch.tensor([[1.0, 0.0, 1.0]])
    expected = torch.sigmoid(r.W @ v[0] + r.b_h)
    assert torch.allclose(r.hidden_probs(v)[0], expected)
    h = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(r.visible_probs(h)[0], torch.sigmoid(r.W[1] + r.b_v))


def test_log_partition_matches_brute_force_on_both_sides():
    r = _tiny()
    assert rbm.log_partition(r) == pytest.approx(_brute_log_z(r), abs=1e-5)
    wide = rbm.RBM(2, 4, init_std=0.5, generator=torch.Generator().manual_seed(1))
    assert rbm.log_partition(wide) == pytest.approx(_brute_log_z(wide), abs=1e-5)


def test_log_likelihood_sums_to_one():
    r = _tiny()
    states = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))
    assert float(rbm.log_likelihood(r, states).exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_cd_training_lowers_reconstruction_error_and_raises_likelihood():
    g = torch.Generator().manual_seed(0)
    data = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).repeat(16, 1)
    r = rbm.RBM(4, 3, generator=g)
    before = float(rbm.log_likelihood(r, data).mean())
    hist = rbm.train_rbm(r, data, epochs=60, lr=0.1, batch_size=8, generator=g)
    assert hist["recon_error"][-1] < hist["recon_error"][0]
    assert float(rbm.log_likelihood(r, data).mean()) > before + 1.0


def test_tied_dbn_bound_is_tight():
    # With the top RBM initialized as the transpose of the first, p(h) is the first RBM's marginal
    # and q(h|v) its exact posterior: bound = DBN log-likelihood = RBM log-likelihood.
    r1 = _tiny()
    r2 = rbm.RBM(2, 3)
    with torch.no_grad():
        r2.W.copy_(r1.W.T)
        r2.b_v.copy_(r1.b_h)
        r2.b_h.copy_(r1.b_v)
    d = rbm.DBN([r1, r2])
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    ll = rbm.log_likelihood(r1, v)
    assert torch.allclose(rbm.dbn_log_likelihood(d, v), ll, atol=1e-5)
    assert torch.allclose(rbm.dbn_bound(d, v), ll, atol=1e-5)


def test_bound_below_likelihood_for_untied_dbn():
    r1, r2 = _tiny(0), rbm.RBM(2, 3, init_std=1.0, generator=torch.Generator().manual_seed(5))
    d = rbm.DBN([r1, r2])
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert bool((rbm.dbn_bound(d, v) <= rbm.dbn_log_likelihood(d, v) + 1e-5).all())


def test_dbn_shapes_sampling_and_mlp_init():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(40, 6, generator=g)
    d, hists = rbm.train_dbn(data, [5, 5], epochs=2, generator=g)
    assert len(hists) == 2 and len(hists[0]["recon_error"]) == 2
    assert d.up(data).shape == (40, 5)
    assert d.reconstruct(data).shape == (40, 6)
    samples = d.sample(7, gibbs_steps=3, generator=g)
    assert samples.shape == (7, 6) and float(samples.min()) >= 0 and float(samples.max()) <= 1
    net = models.mlp(in_features=6, out_features=2, depth=3, width=5, activation="sigmoid")
    rbm.init_from_dbn(net, d)
    assert torch.equal(net.blocks[1].linear.weight, d.rbms[1].W)
    with torch.no_grad():
        h = net.blocks[1](net.blocks[0](data))
    assert torch.allclose(h, d.up(data), atol=1e-6)


def test_digits_unit_scale_and_split():
    (xtr, ytr), (xte, yte) = data.digits(unit=True)
    assert xtr.shape[1] == 64 and float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    assert len(xtr) + len(xte) == 1797
    # data.digits' split, pixels divided by 16 instead of standardized
    (std_tr, std_ytr), _ = data.digits()
    assert torch.equal(ytr, std_ytr) and torch.equal(xtr * 16, (xtr * 16).round())
    assert not torch.equal(xtr, std_tr)
    with pytest.raises(ValueError, match="unit"):
        data.digits(unit=1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rbm.RBM(0, 3), "visible"),
        (lambda: rbm.RBM(3, 2.5), "hidden"),
        (lambda: rbm.RBM(3, 2, init_std=-1), "init_std"),
        (lambda: _tiny().hidden_probs(torch.zeros(2, 4)), "shape"),
        (lambda: rbm.train_rbm(_tiny(), torch.full((2, 3), 2.0), epochs=1), r"\[0, 1\]"),
        (lambda: rbm.train_rbm(_tiny(), torch.zeros(2, 3), epochs=0), "epochs"),
        (lambda: rbm.train_rbm(_tiny(), torch.zeros(2, 3), epochs=1, lr=0), "lr"),
        (lambda: rbm.train_rbm(_tiny(), torch.zeros(2, 3), epochs=1, k=0), "k"),
        (lambda: rbm.train_rbm(_tiny(), torch.zeros(2, 3), epochs=1, momentum=1.0), "momentum"),
        (lambda: rbm.train_rbm(_tiny(), torch.zeros(2, 3), epochs=1, weight_decay=-1), "weight_decay"),
        (lambda: rbm.train_rbm("x", torch.zeros(2, 3), epochs=1), "rbm"),
        (lambda: rbm.log_partition(rbm.RBM(21, 22)), "at most"),
        (lambda: rbm.DBN([]), "non-empty"),
        (lambda: rbm.DBN([rbm.RBM(3, 2), rbm.RBM(3, 2)]), "chain"),
        (lambda: rbm.DBN([rbm.RBM(3, 2)]).up(torch.zeros(1, 3), layers=2), "layers"),
        (lambda: rbm.DBN([rbm.RBM(3, 2)]).sample(0), "n"),
        (lambda: rbm.dbn_bound(rbm.DBN([rbm.RBM(3, 2)]), torch.zeros(1, 3)), "two RBMs"),
        (lambda: rbm.train_dbn(torch.zeros(2, 3), [], epochs=1), "sizes"),
        (lambda: rbm.init_from_dbn(models.mlp(in_features=3, out_features=2, depth=1, width=4),
                                   rbm.DBN([rbm.RBM(3, 2)])), "shape"),
        (lambda: rbm.init_from_dbn(torch.nn.Linear(2, 2), rbm.DBN([rbm.RBM(3, 2)])), "blocks"),
        (lambda: rbm.init_from_dbn(models.mlp(in_features=3, out_features=2, depth=1, width=2), "x"), "DBN"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
