"""How the fast CLADO engine chooses and runs its runner: a refusal comes with its reason, a
bug is never taken for a refusal, out of memory in a stacked pass is retried smaller, and
both runners evaluate nodes with the one shared interpreter."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clado_cli.config import LayersConfig, QuantConfig
from clado_cli.prep.clado import (BranchingRunner, FastRunner, NotTraceable, clado_fast, clado_reference,
                                  make_runner)
from clado_cli.prep.clado import fast as fast_mod
from clado_cli.prep.clado import graph as graph_mod
from clado_cli.prep.clado.graph import prepare
from clado_cli.prep.clado.interpreter import Interpreter
from clado_cli.quant.layers import plan_layers
from clado_cli.quant.model import QuantModel

TOL = 1e-5


class ChainNet(nn.Module):
    def __init__(self, control_flow=False):
        super().__init__()
        self.control_flow = control_flow
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        h = self.relu(self.c1(x))
        if self.control_flow and h.mean() > 0:      # data-dependent: torch.fx cannot follow it
            h = h * 2
        h = self.relu(self.c3(self.relu(self.c2(h))))
        return self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))))


def _qmodel(model, seed=0, n=6, side=6):
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.4)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, side, side, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    plan = plan_layers(model, x[:1], LayersConfig())
    qm = QuantModel(model, plan, QuantConfig(weight_candidates=[2, 4, 8])).eval()
    qm.calibrate([torch.randn(n, 3, side, side, generator=g)])
    return qm, x, y


def _close(a, b):
    assert float(a["L0"]) == pytest.approx(float(b["L0"]), abs=TOL)
    assert np.abs(a["Ltilde"] - b["Ltilde"]).max() <= TOL


# -- refusal and its reason -----------------------------------------------------------------

def test_make_runner_says_why_it_refuses_an_untraceable_model():
    qm, x, y = _qmodel(ChainNet(control_flow=True))
    runner, why = make_runner(qm)
    assert runner is None
    assert "TraceError" in why and "control flow" in why
    with pytest.raises(NotTraceable, match="control flow"):
        clado_fast(qm, x, y)
    clado_reference(qm, x, y)                     # what the caller uses instead


def test_make_runner_gives_no_reason_when_it_accepts():
    qm, _, _ = _qmodel(ChainNet())
    runner, why = make_runner(qm)
    assert isinstance(runner, FastRunner) and why is None


def test_prep_warns_with_the_reason(small_cfg, monkeypatch):
    import clado_cli.prep.clado as engines
    import clado_cli.prep.run as run
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    said = []
    monkeypatch.setattr(engines, "make_runner", lambda qm, max_batch=None: (None, "some construct it cannot run"))
    monkeypatch.setattr(run, "warn", said.append)

    def reference(qm, x, y, loss_kind="ce", tick=None, rows=None):      # the engine itself is not under test
        P = len(qm.options)
        return {"Ltilde": np.zeros((P, P)), "L0": np.float64(0.0)}

    monkeypatch.setattr(engines, "clado_reference", reference)
    s = Session(small_cfg())
    summary = run_prep(s, "clado", 0, 0)
    assert summary["engine"] == "reference"
    assert ("the model cannot be traced by torch.fx (some construct it cannot run); "
            "CLADO prep uses the reference engine") in said


# -- a bug is not a refusal -----------------------------------------------------------------

def test_a_bug_in_graph_preparation_propagates(monkeypatch):
    qm, _, _ = _qmodel(ChainNet())

    def broken(self, n, mod):
        raise ValueError("a bug in the preparation")

    monkeypatch.setattr(graph_mod.Prepared, "_module", broken)
    with pytest.raises(ValueError, match="a bug in the preparation"):
        make_runner(qm)


def test_a_bug_in_the_probe_propagates(monkeypatch):
    qm, x, y = _qmodel(ChainNet())
    runner, _ = make_runner(qm)
    real = runner.interp.eval

    def broken(n, get, x_):
        if n.op == "call_function" and n.target is torch.flatten:
            raise ValueError("a bug in a node")
        return real(n, get, x_)

    monkeypatch.setattr(runner.interp, "eval", broken)
    with pytest.raises(ValueError, match="a bug in a node"):
        clado_fast(qm, x, y, runner=runner)


def test_a_bug_in_a_stacked_pass_propagates_instead_of_unstacking(monkeypatch):
    qm, x, y = _qmodel(ChainNet())
    runner, _ = make_runner(qm, max_batch=9)
    real = runner.run_pass

    def broken(m, bits, trunk, parent, p0, p1, N):
        if len(bits) * (p1 - p0) > 1:
            raise ValueError("a bug in a stacked pass")
        return real(m, bits, trunk, parent, p0, p1, N)

    monkeypatch.setattr(runner, "run_pass", broken)
    with pytest.raises(ValueError, match="a bug in a stacked pass"):
        clado_fast(qm, x, y, runner=runner)
    assert False not in runner.stack_ok


# -- out of memory --------------------------------------------------------------------------

def test_out_of_memory_in_a_stacked_pass_is_retried_smaller(monkeypatch):
    qm, x, y = _qmodel(ChainNet())
    ref = clado_reference(qm, x, y)
    runner, _ = make_runner(qm, max_batch=9)
    real = runner.run_pass
    rows = []

    def small_memory(m, bits, trunk, parent, p0, p1, N):
        if len(bits) * (p1 - p0) > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        rows.append(len(bits) * (p1 - p0))
        return real(m, bits, trunk, parent, p0, p1, N)

    said = []
    monkeypatch.setattr(runner, "run_pass", small_memory)
    monkeypatch.setattr(fast_mod, "warn", said.append)
    ticks = []
    _close(clado_fast(qm, x, y, runner=runner, tick=ticks.append), ref)
    assert said and all("out of memory" in s for s in said)
    assert 2 in rows                              # still stacked, two at a time
    assert False not in runner.stack_ok
    L, B = len(qm.decided), len(qm.candidates)
    assert sum(ticks) == L * B + B * B * L * (L - 1) // 2


def test_out_of_memory_on_one_perturbation_propagates(monkeypatch):
    qm, x, y = _qmodel(ChainNet())
    runner, _ = make_runner(qm, max_batch=1)

    def no_memory(*a):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(runner, "run_pass", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        clado_fast(qm, x, y, runner=runner)


# -- the shared interpreter -----------------------------------------------------------------

@torch.no_grad()
def test_the_interpreter_runs_the_prepared_graph_as_the_model():
    qm, x, _ = _qmodel(ChainNet())
    qm.reset()
    want = qm(x)
    for functional in (True, False):
        interp = Interpreter(prepare(qm, functional_qlayers=functional))
        vals = {}
        seen = []
        out = interp.run(vals, x, seen=lambda i, n, v: seen.append(i))
        assert torch.allclose(out, want, atol=1e-6)
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        # each value is dropped after its last reader: only the output's is left
        assert all(u.op == "output" for n in vals for u in n.users)
    runner = BranchingRunner(qm)
    # a run stopped before a node, then resumed from it, gives the same output
    vals = {}
    mid = runner.forks[len(runner.forks) // 2]
    assert runner.run(vals, x, 0, mid) is None
    assert torch.allclose(runner.run(vals, x, mid), want, atol=1e-6)
