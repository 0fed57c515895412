"""The fast prep engines give the reference engines' numbers (CLADO, MPQCO) and the HAWQ
estimators compute what they claim (performance issue)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clado_cli.config import LayersConfig, QuantConfig
from clado_cli.prep.clado import (BranchingRunner, FastRunner, NotTraceable, clado_fast, clado_reference,
                                  make_runner, measurement_count)
from clado_cli.quant.layers import plan_layers
from clado_cli.quant.model import QuantModel

TOL = 1e-5


class ScaledConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (QLayer calls it through functional_call)."""

    def forward(self, x):
        return F.conv2d(x, self.weight * 0.5, self.bias, self.stride, self.padding, self.dilation, self.groups) * 2


class Inception(nn.Module):
    """Two parallel convs concatenated, a depthwise conv, and a residual connection."""

    def __init__(self, c, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.a = nn.Conv2d(c, c // 2, 1)
        self.b = nn.Conv2d(c, c // 2, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x), inplace=self.inplace)], 1)
        return self.bn(self.dw(y)) + x


class BranchyNet(nn.Module):
    def __init__(self, classes=5, mix_batch=False, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.inc1 = Inception(8, inplace)
        self.sub = ScaledConv(8, 8, 3, padding=1)
        self.inc2 = Inception(8, inplace)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, classes)
        self.mix_batch = mix_batch

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)), inplace=self.inplace)
        x = self.inc1(x)
        h = self.relu(self.sub(x)) if self.inplace else F.relu(self.sub(x))
        t = h * 0.5
        if self.inplace:
            h.add_(x)                             # in-place residual; later reads see h + x
        else:                                     # (autograd needs the out-of-place form)
            h = h + x
        h = h + t
        if self.mix_batch:                        # couples the samples of a batch
            h = h - h.mean(0, keepdim=True)
        x = self.inc2(h)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.relu(self.fc1(x)))


class SharedNet(nn.Module):
    """One decided conv called twice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.mid = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.mid(x))
        x = F.relu(self.shared(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class AliasedInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.c(self.stem(x))
        v = h[:, :2]                              # a view of h ...
        h.add_(1)                                 # ... that this mutation changes too
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.cat([v, h[:, 2:]], 1), 1), 1))


def _qmodel(model, seed=0, n=8, side=8, classes=5):
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, side, side, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    plan = plan_layers(model, x[:1], LayersConfig())
    qm = QuantModel(model, plan, QuantConfig(weight_candidates=[2, 4, 8])).eval()
    qm.calibrate([torch.randn(n, 3, side, side, generator=g) for _ in range(2)])
    return qm, x, y


def _check(qm, x, y, loss, ref=None, **kw):
    ref = ref or clado_reference(qm, x, y, loss)
    ticks = []
    fast = clado_fast(qm, x, y, loss, tick=ticks.append, **kw)
    L, B = len(qm.decided), len(qm.candidates)
    assert sum(ticks) == measurement_count(L, B) - 1
    assert fast["L0"] == pytest.approx(float(ref["L0"]), abs=TOL)
    assert np.abs(fast["Ltilde"] - ref["Ltilde"]).max() <= TOL
    assert np.array_equal(fast["Ltilde"], fast["Ltilde"].T)
    return fast


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_fast_equals_reference_on_embedded_model(shared_session, loss):
    s = shared_session
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    runner, _ = make_runner(qm)
    assert isinstance(runner, FastRunner)
    ref = clado_reference(qm, x, y, loss)
    _check(qm, x, y, loss, ref=ref, runner=runner)
    # stacking verified (and passed) on every layer that stacks
    stacks = runner.stats["stack_per_layer"]
    assert [ok for ok, m in zip(runner.stack_ok, stacks) if m > 1] == [True] * sum(m > 1 for m in stacks)
    assert False not in runner.stack_ok
    _check(qm, x, y, loss, ref=ref, runner=runner, max_batch=1)


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_fast_equals_reference_with_branches_residuals_and_subclasses(loss):
    qm, x, y = _qmodel(BranchyNet())
    names = [q.name for q in qm.decided]
    assert {"inc1.a", "inc1.b", "inc1.dw", "sub", "fc1"} <= set(names)
    runner, _ = make_runner(qm)
    assert isinstance(runner, FastRunner)
    ref = clado_reference(qm, x, y, loss)
    for mb in (None, 1, 2, 9):
        _check(qm, x, y, loss, ref=ref, runner=runner, max_batch=mb)
    # the parallel branches: the pass for inc1.b does not recompute inc1.a
    f_b = runner.fork_nodes[names.index("inc1.b")]
    f_a = runner.fork_nodes[names.index("inc1.a")]
    assert f_a not in runner.down[names.index("inc1.b")] and f_b not in runner.down[names.index("inc1.a")]


def test_batch_mixing_model_is_detected_and_still_exact():
    qm, x, y = _qmodel(BranchyNet(mix_batch=True))
    runner, _ = make_runner(qm)
    ref = clado_reference(qm, x, y, "ce")
    _check(qm, x, y, "ce", ref=ref, runner=runner, max_batch=9)
    assert False in runner.stack_ok               # stacked passes disagreed, layers run one by one
    _check(qm, x, y, "ce", ref=ref, runner=runner, max_batch=9)


def test_shared_decided_layer_uses_the_branching_runner():
    qm, x, y = _qmodel(SharedNet(), classes=4)
    assert "shared" in [q.name for q in qm.decided]
    runner, _ = make_runner(qm)
    assert isinstance(runner, BranchingRunner)
    _check(qm, x, y, "ce", runner=runner)


def test_inplace_op_on_an_aliased_value_is_refused():
    qm, x, y = _qmodel(AliasedInplace(), classes=3)
    runner, why = make_runner(qm)
    assert runner is None                         # the caller falls back to the reference engine
    assert "in-place op" in why and "add_" in why # and says why
    with pytest.raises(NotTraceable, match="in-place op"):
        clado_fast(qm, x, y)


def test_fast_runner_frees_values_between_steps(shared_session):
    s = shared_session
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    runner, _ = make_runner(qm, max_batch=1)
    clado_fast(qm, x, y, runner=runner)
    runner.probe(x)
    # only a cut of the graph stays alive: far less than every activation of the trunk
    # plus one branch (each at batch N, max_batch=1)
    assert 0 < runner.stats["peak_env_bytes"] <= 3 * runner.forward_live_bytes


def test_auto_stacking_keeps_peak_memory_within_2x_of_the_reference(shared_session):
    """The issue's memory bound, measured exactly (torch profiler allocation events): with the
    default (auto) stacking the fast engine's peak is within 2x of the reference engine's, both
    the transient part and the total with the QuantModel's own tensors; stacking every layer
    9-fold would not be."""
    from clado_cli.prep.clado import persistent_bytes
    from clado_cli.prep.memory import tensor_peak

    s = shared_session
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    runner, _ = make_runner(qm)
    clado_fast(qm, x, y, runner=runner)            # first batch: verifies the stacked passes
    stacks = runner.stats["stack_per_layer"]
    assert all(1 <= m <= 9 for m in stacks) and stacks[0] < stacks[-1]
    _, fast = tensor_peak(lambda: clado_fast(qm, x, y, runner=runner))
    _, ref = tensor_peak(lambda: clado_reference(qm, x, y))
    S = persistent_bytes(qm)
    assert 0 < fast <= 2 * ref
    assert S + fast <= 2 * (S + ref)
    wide, _ = make_runner(qm, max_batch=9)
    clado_fast(qm, x, y, runner=wide)
    _, fast9 = tensor_peak(lambda: clado_fast(qm, x, y, runner=wide))
    assert fast9 > 2 * ref


# -- MPQCO ---------------------------------------------------------------------------------

def test_mpqco_fast_equals_reference_on_embedded_model(shared_session):
    from clado_cli.prep.mpqco import mpqco_fast, mpqco_reference

    s = shared_session
    model = s.float_model
    x, y = s.sensitivity_batch(0)
    model.requires_grad_(True)
    ref = mpqco_reference(model, s.qmodel, x, y)["s"]
    for method in ("auto", "linear", "vmap"):
        fast = mpqco_fast(model, s.qmodel, x, y, method=method)["s"]
        assert np.allclose(fast, ref, rtol=1e-4, atol=1e-12), method


def test_mpqco_cached_deltas_give_identical_numbers(shared_session):
    """prep computes ΔW once per run (the run's runner) and passes it to every batch; that must
    give the very same numbers as recomputing ΔW inside each call, on both fast methods."""
    from clado_cli.prep import PrepRun
    from clado_cli.prep.mpqco import mpqco_fast, weight_deltas

    s = shared_session
    model = s.float_model.requires_grad_(True)
    x, y = s.sensitivity_batch(1)
    run = PrepRun(s, "mpqco", 0, 1).setup(params=False)
    deltas = run.runner
    assert run.setup() is run and run.runner is deltas       # built once per run
    assert PrepRun(s, "mpqco", 0, 1, engine="reference").setup(params=False).runner is None
    for name, d in weight_deltas(s.qmodel).items():
        assert torch.equal(deltas[name], d)
    for method in ("linear", "vmap"):
        a = mpqco_fast(model, s.qmodel, x, y, method=method)["s"]
        b = mpqco_fast(model, s.qmodel, x, y, method=method, deltas=deltas)["s"]
        assert np.array_equal(a, b), method


def test_mpqco_fast_on_subclass_layers_uses_vmap_and_agrees():
    from clado_cli.prep.mpqco import _is_linear_in_weight, mpqco_fast, mpqco_reference

    qm, x, y = _qmodel(BranchyNet(inplace=False))
    model = _float_twin(qm)
    model.requires_grad_(True)
    assert not _is_linear_in_weight(model.get_submodule("sub"))
    ref = mpqco_reference(model, qm, x, y)["s"]
    assert np.allclose(mpqco_fast(model, qm, x, y)["s"], ref, rtol=1e-4, atol=1e-12)
    # the linear method still applies to every stock layer; for the subclass it is exact too
    # here because its forward is linear in the weight
    assert np.allclose(mpqco_fast(model, qm, x, y, method="linear")["s"], ref, rtol=1e-4, atol=1e-12)


def _float_twin(qm):
    """The float model behind a QuantModel (QLayers unwrapped)."""
    import copy

    from clado_cli.quant.model import QLayer, _set_submodule

    model = copy.deepcopy(qm.model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QLayer):
            _set_submodule(model, name, mod.layer)
    return model.eval()


# -- HAWQ ----------------------------------------------------------------------------------

class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 3)
        self.l2 = nn.Linear(3, 3)
        self.l3 = nn.Linear(3, 3)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def _exact_hessian(model, names, x, y):
    """The full Hessian over the decided weights, by brute force (autograd.functional)."""
    params = [model.get_submodule(n).weight for n in names]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def f(flat):
        ws = torch.split(flat, sizes)
        subs = {f"{n}.weight": w.reshape(s) for n, w, s in zip(names, ws, shapes)}
        out = torch.func.functional_call(model, subs, (x,))
        return F.cross_entropy(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params]).double()
    model.double()
    try:
        H = torch.autograd.functional.hessian(f, flat)
    finally:
        model.float()
    return H, sizes


def test_hawq_estimators_match_exact_hessian_probe_by_probe():
    from clado_cli.prep.hawq import _rademacher, hawq_traces

    torch.manual_seed(0)
    model = TinyMLP().eval()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    plan = plan_layers(model, x[:1], LayersConfig(fix_first_last=False))
    qm = QuantModel(model, plan, QuantConfig(weight_candidates=[2, 4]))
    qm.calibrate([x])
    names = [q.name for q in qm.decided]
    H, sizes = _exact_hessian(model, names, x.double(), y)
    offs = np.cumsum([0] + sizes)
    blocks = [H[offs[l]:offs[l + 1], offs[l]:offs[l + 1]] for l in range(len(names))]
    exact = np.array([float(b.trace()) for b in blocks])
    params = [model.get_submodule(n).weight for n in names]
    K = 6
    # the same Rademacher probes the estimators draw, replayed against the exact Hessian
    per = hawq_traces(model, qm, x, y, "ce", max_iter=K, tol=1e-12, seed=3, estimator="per-layer",
                      return_samples=True)
    gen = torch.Generator().manual_seed(3)
    for l, p in enumerate(params):
        for it in range(K):
            v = _rademacher(p.shape, gen, p.device).double().reshape(-1)
            assert per["samples"][l, it] == pytest.approx(float(v @ blocks[l] @ v), rel=1e-4, abs=1e-6)
    allr = hawq_traces(model, qm, x, y, "ce", max_iter=K, tol=1e-12, seed=3, estimator="all-layers",
                       return_samples=True)
    gen = torch.Generator().manual_seed(3)
    for it in range(K):
        v = torch.cat([_rademacher(p.shape, gen, p.device).double().reshape(-1) for p in params])
        hv = H @ v
        for l in range(len(names)):
            s = slice(offs[l], offs[l + 1])
            assert allr["samples"][l, it] == pytest.approx(float(v[s] @ hv[s]), rel=1e-4, abs=1e-6)
    # and both are unbiased: their means stay within a few standard errors of the exact traces
    for est in ("per-layer", "all-layers"):
        res = hawq_traces(model, qm, x, y, "ce", max_iter=200, tol=1e-12, seed=1, estimator=est,
                          return_samples=True)
        se = res["samples"].std(1) / np.sqrt(res["iterations"])
        assert np.all(np.abs(res["traces"] - exact) <= 5 * se + 1e-6), est
    assert allr["iterations"].tolist() == [K] * len(names)


@pytest.mark.parametrize("model", ["branchy", "shared"])
def test_rows_partition_sums_to_the_full_matrix(model):
    qm, x, y = _qmodel(BranchyNet()) if model == "branchy" else _qmodel(SharedNet(), classes=4)
    L = len(qm.decided)
    runner, _ = make_runner(qm)
    full = clado_fast(qm, x, y, runner=runner)["Ltilde"]
    parts = [[l for l in range(L) if l % 2 == r] for r in range(2)]
    fast = sum(clado_fast(qm, x, y, runner=runner, rows=p)["Ltilde"] for p in parts)
    ref = sum(clado_reference(qm, x, y, rows=p)["Ltilde"] for p in parts)
    assert np.array_equal(fast, full)
    assert np.abs(ref - full).max() <= TOL
