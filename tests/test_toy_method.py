"""A new method is one file: this test defines a toy method (the mean squared change of the
logits when one option is applied alone), registers it, and runs it through prep, optimize
(library and CLI) and evaluate, with its cache directory, its parameters and its program
taken from the class alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from clado_cli.methods import METHODS, Method, SolveOptions, register
from clado_cli.methods.mpqco import LinearSensitivities, solve_linear
from clado_cli.store import Stored


class LogitMse(Method):
    name = "logitmse"
    help = "toy: mean squared logit change per option."
    program = "ILP"
    marker = "x"
    stored = Stored("logitmse", "LOGIT_MSE", "logit-MSE sensitivities")

    def cache_params(self, cfg):
        return {"reduction": "mean"}

    def work_per_batch(self, session):
        return len(session.qmodel.options)

    @torch.no_grad()
    def compute(self, session, x, y, k, engine, runner, tick=None):
        qm = session.qmodel
        qm.reset()
        base = qm(x)
        out = []
        for opt in qm.options:
            qm.apply([opt])
            out.append(float(((qm(x) - base) ** 2).mean()))
            if tick:
                tick(1)
        qm.reset()
        L, B = len(qm.decided), len(qm.candidates)
        return {"s": np.array(out).reshape(L, B)}

    def estimate_sizes(self, session):
        n = len(session.qmodel.options)
        return 8 * n + 300, {"forward_passes": n + 1}

    def expected_arrays(self, space):
        return {"s": (space.n_layers, len(space.candidates))}

    def make_sensitivities(self, base):
        s = base.values["s"].reshape(-1)
        return LinearSensitivities(**{**vars(base), "singles": s}, s=s)

    def solve(self, sens, budget, opts: SolveOptions):
        return solve_linear(sens, budget, opts)


@pytest.fixture
def toy():
    register(LogitMse)
    yield METHODS.get("logitmse")
    METHODS.unregister("logitmse")


def test_toy_method_through_prep_optimize_evaluate(toy, small_cfg, tmp_path):
    from clado_cli.cli import app
    from clado_cli.decide import decide
    from clado_cli.decisions import validate_decision
    from clado_cli.evaluate import evaluate_decision
    from clado_cli.inspect_cache import cache_listing
    from clado_cli.optimize import resolve_budget_spec
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    cfg = small_cfg()
    s = Session(cfg)
    summary = run_prep(s, "logitmse", 0, 1)
    assert summary["computed"] == [0, 1]
    assert all("/LOGIT_MSE/batch_" in f for f in summary["files"])
    params = json.loads((s.cache.root / "LOGIT_MSE" / "params.json").read_text())
    assert params == {"reduction": "mean"}
    # the cached batch holds exactly what the method computes on that batch
    arrays, n = s.cache.read_batch(toy.stored, 1)
    x, y = s.sensitivity_batch(1)
    assert n == cfg.data.bs and np.array_equal(arrays["s"], toy.compute(s, x, y, 1, None, None)["s"])
    assert (arrays["s"] > 0).all()   # quantizing changes the logits
    assert "logitmse" in cache_listing(cfg.cache_dir)[0]["methods"]

    numel = sum(l.numel for l in s.plan.decided)
    d = decide(s.cache, ["logitmse"], [resolve_budget_spec("avg:4", numel)], config=cfg.to_dict())[0]
    validate_decision(d)   # the schema's method list comes from the registry
    assert d["method"] == "logitmse" and d["psd"] is None
    assert d["sizes"]["decided_bytes"] <= d["budget"]["bytes"]
    combined = (np.asarray(arrays["s"]) + s.cache.read_batch(toy.stored, 0)[0]["s"]) / 2
    chosen = [s.qmodel.candidates.index(d["layers"][l.name]["w_bits"]) for l in s.plan.decided]
    assert d["predicted_loss_increase"] == pytest.approx(sum(combined[l, k] for l, k in enumerate(chosen)))
    row = evaluate_decision(s, d)
    assert row["label"] == "logitmse @ avg:4" and 0 <= row["top1"] <= 1

    # and through the command line, where --method and the config accept the new name
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**cfg.to_dict(), "optimize": {"methods": ["logitmse"]}}))
    runner = CliRunner()
    out = tmp_path / "d.json"
    r = runner.invoke(app, ["optimize", "-c", str(cfg_file), "--method", "logitmse", "--avg-bits", "4",
                            "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["layers"] == d["layers"]
    r = runner.invoke(app, ["evaluate", str(out), "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["top1"] == row["top1"]


def test_unknown_method_lists_the_registered_ones(small_cfg):
    from clado_cli.errors import UsageError
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    with pytest.raises(UsageError, match="unknown method 'logitmse'.*clado"):
        run_prep(Session(small_cfg()), "logitmse", 0, 0)
