"""Every command through Typer's CliRunner: JSON on stdout, files written, errors as one line."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clado_cli.cli import app
from clado_cli.decisions import decision_file_name
from clado_cli.methods import kind_of

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    if res.exit_code != 0:
        raise AssertionError(f"exit {res.exit_code}: {res.stderr}\n{res.stdout}")
    if "--json" in args:
        assert res.stdout.lstrip()[:1] in "[{", f"not JSON on stdout: {res.stdout[:200]!r}"
    return res


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    p = d / "small.yaml"
    p.write_text(f"""
data: {{dataset: digits, bs: 16, sb: 0, eb: 1, calibration_size: 128}}
prep: {{hawq_max_iter: 20}}
optimize: {{budgets: ["avg:3", "avg:5"], methods: [clado, mpqco, hawq, naive], time_limit: 30}}
cache_dir: {d / 'cache'}
device: cpu
""")
    return p


COMMANDS = [[], ["layers"], ["prep"], ["prep", "clado"], ["prep", "mpqco"], ["prep", "hawq"], ["optimize"],
            ["evaluate"], ["run"], ["inspect"], ["cache"], ["cache", "ls"], ["cache", "verify"], ["cache", "merge"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "clado")
def test_help_has_an_example(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0
    assert "Example" in res.stdout


def test_layers_json_embedded(cfg_file):
    rep = json.loads(invoke("layers", "-c", cfg_file, "--json", "-q").stdout)
    assert rep["counts"] == {"decided": 12, "fixed": 2, "skipped": 0, "options": 36}
    assert [l["name"] for l in rep["layers"] if l["role"] == "fixed"] == ["conv1", "fc"]
    n = rep["decided_numel"]
    assert n == sum(l["numel"] for l in rep["layers"] if l["role"] == "decided")
    assert rep["uniform_sizes"]["4"]["decided_bytes"] == n * 4 / 8
    assert rep["clado_prep_per_batch"]["forward_passes"] == 1 + 36 + 9 * 12 * 11 // 2


def test_layers_json_resnet18_random_init():
    import torchvision

    rep = json.loads(invoke("layers", "--model", "resnet18", "--weights", "none", "--data", "synthetic:3x64x64",
                            "--device", "cpu", "--json", "-q").stdout)
    ref = torchvision.models.resnet18(num_classes=10)
    convs = [(n, m) for n, m in ref.named_modules() if isinstance(m, (torch_nn().Conv2d, torch_nn().Linear))]
    decided = [l for l in rep["layers"] if l["role"] == "decided"]
    assert [l["name"] for l in decided] == [n for n, _ in convs[1:-1]]
    assert [l["numel"] for l in decided] == [m.weight.numel() for _, m in convs[1:-1]]
    assert rep["counts"]["decided"] == 19 and rep["counts"]["options"] == 57
    assert rep["clado_prep_per_batch"]["pairs"] == 9 * 19 * 18 // 2


def torch_nn():
    import torch.nn as nn

    return nn


def test_prep_optimize_evaluate_inspect_end_to_end(cfg_file, tmp_path):
    for method in ("clado", "mpqco", "hawq"):
        summary = json.loads(invoke("prep", method, "-c", cfg_file, "--json", "-q").stdout)
        assert summary["computed"] == [0, 1] and Path(summary["cache"]).is_dir()
    again = json.loads(invoke("prep", "clado", "-c", cfg_file, "--json", "-q").stdout)
    assert again["computed"] == [] and again["skipped"] == [0, 1]
    dry = json.loads(invoke("prep", "clado", "-c", cfg_file, "--eb", "3", "--dry-run", "--json", "-q").stdout)
    assert dry["to_compute"] == [2, 3] and dry["per_batch"]["forward_passes"] == 631

    listing = json.loads(invoke("cache", "ls", "--cache-dir", cfg_file.parent / "cache", "--json").stdout)
    assert set(listing[0]["methods"]) == {"clado", "mpqco", "hawq"}
    invoke("cache", "verify", "--cache-dir", cfg_file.parent / "cache")

    out_dir = tmp_path / "decisions"
    decisions = json.loads(invoke("optimize", "-c", cfg_file, "--budgets", "avg:3,8", "--out-dir", out_dir,
                                  "--json", "-q").stdout)
    assert len(decisions) == 8
    index = json.loads((out_dir / "index.json").read_text())
    assert len(index["decisions"]) == 8
    for d in decisions:
        assert d["sizes"]["decided_bytes"] <= d["budget"]["bytes"]
        assert d["sizes"]["total_bytes"] == d["sizes"]["decided_bytes"] + d["sizes"]["fixed_bytes"]
        assert (out_dir / decision_file_name(d)).is_file()
    # with no binding budget (8 bits on average = everything at 8) every method takes 8 bits
    # everywhere, unless its estimates are negative somewhere, which the decision then says
    for d in decisions:
        if d["budget"]["given"] == "avg:8":
            widest = {v["w_bits"] for v in d["layers"].values()} == {8}
            negative = any("negative" in w for w in d["warnings"])
            assert widest or negative, d["method"]
            if d["method"] == "mpqco":  # a sum of squares: never negative
                assert widest and not negative

    one = tmp_path / "clado.json"
    invoke("optimize", "-c", cfg_file, "--method", "clado", "--avg-bits", "3", "--psd", "shift", "-o", one, "-q")
    res = json.loads(invoke("evaluate", one, "--uniform", "2,8", "--json", "-q").stdout)
    kinds = [r["kind"] for r in res["results"]]
    assert kinds == ["float", "uniform", "uniform", "decision"]
    assert res["results"][-1]["provenance"]["fingerprint"] == json.loads(one.read_text())["cache"]["fingerprint"]

    heat = tmp_path / "heat.png"
    csv = tmp_path / "sens.csv"
    pairs = tmp_path / "pairs.csv"
    rep = json.loads(invoke("inspect", "-c", cfg_file, "--heatmap", heat, "--csv", csv, "--csv-pairs", pairs,
                            "--json", "-q").stdout)
    # one row per method, layer and width; one per ordered pair of options of different layers
    assert heat.stat().st_size > 1000 and csv.read_text().count("\n") == 1 + 3 * 12 * 3
    assert pairs.read_text().count("\n") == 1 + 36 * 36 - 12 * 9
    # the files give the cache's decisions again, without the cache (same widths, same prediction)
    again = json.loads(invoke("optimize", "--sensitivities", csv, "--pairs", pairs, "--budgets", "avg:3,8",
                              "--json", "-q").stdout)
    assert [(d["method"], d["budget"]) for d in again] == [(d["method"], d["budget"]) for d in decisions]
    for a, b in zip(decisions, again):
        assert a["layers"] == b["layers"] and a["predicted_loss_increase"] == b["predicted_loss_increase"], a["method"]
    # the heatmap's numbers are the G entries computed from the cached Ltilde
    from clado_cli.methods import get_method, load_sensitivities
    from clado_cli.store.cache import Cache

    sens = load_sensitivities(Cache.from_dir(Path(listing[0]["path"])), get_method("clado"))
    B = 3
    M = np.array(rep["interaction"]["matrix"])
    for l in range(12):
        for m in range(12):
            expected = 0.0 if l == m else sens.G[l * B, m * B]
            assert M[l, m] == pytest.approx(expected, abs=1e-15)
    Lt = sens.Ltilde
    assert M[0, 1] == pytest.approx(Lt[0, B] - Lt[0, 0] - Lt[B, B], abs=1e-12)


def test_prep_stack_changes_memory_not_numbers(cfg_file, tmp_path):
    """--stack sets how many perturbations the fast engine stacks per pass (auto: per layer, by
    the memory rule of docs/performance.md, more where less of the network is downstream); the
    numbers are the same for every setting, and the setting is not part of the fingerprint."""
    from clado_cli.store.cache import Cache

    runs = {}
    for stack in (None, "1", "9"):
        d = tmp_path / f"stack-{stack}"
        flags = [] if stack is None else ["--stack", stack]
        summary = json.loads(invoke("prep", "clado", "-c", cfg_file, "--eb", "0", "--cache-dir", d, *flags,
                                    "--json", "-q").stdout)
        # the run reports the memory it held (the process's peak; on CUDA also the allocator's)
        assert summary["memory"]["process_peak_rss_bytes"] > 50 * 2**20
        if stack is None:
            assert summary["stack"][0] < summary["stack"][-1] <= 9
        else:
            assert summary["stack"] == [int(stack)] * 12
        runs[stack] = summary
    assert len({Path(r["cache"]).name for r in runs.values()}) == 1          # one fingerprint
    vals = [Cache.from_dir(Path(r["cache"])).read_batch(kind_of("clado"), 0)[0]["Ltilde"] for r in runs.values()]
    assert all(np.array_equal(vals[0], v) for v in vals[1:])


def test_run_writes_results_and_plot(cfg_file, tmp_path):
    out = tmp_path / "run"
    res = json.loads(invoke("run", "-c", cfg_file, "--out-dir", out, "--methods", "clado,hawq", "--json", "-q").stdout)
    data = json.loads((out / "results.json").read_text())
    decisions = [r for r in data["results"] if r["kind"] == "decision"]
    assert sorted((r["method"], r["budget"]["given"]) for r in decisions) == \
        [("clado", "avg:3"), ("clado", "avg:5"), ("hawq", "avg:3"), ("hawq", "avg:5")]
    assert [r["label"] for r in data["results"] if r["kind"] != "decision"] == \
        ["float", "uniform 2-bit", "uniform 4-bit", "uniform 8-bit"]
    png = out / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert res["plot"] == str(png)


def test_errors_are_one_line_with_exit_codes(cfg_file, tmp_path):
    res = runner.invoke(app, ["optimize", "-c", str(cfg_file), "--size-budget", "4XB"])
    assert res.exit_code == 2 and res.stderr.startswith("Error: invalid size '4XB'") and res.stderr.count("\n") == 1
    res = runner.invoke(app, ["layers", "--model", "resnet81", "--weights", "none"])
    assert res.exit_code == 2 and "did you mean" in res.stderr and "Traceback" not in res.stderr
