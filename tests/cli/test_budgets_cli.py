"""Budgets on size, BOPs and user cost tables, several at once, with ties and per-layer widths,
through `clado optimize` on a real (embedded, digits) cache."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clado_cli.cli import app

runner = CliRunner()


def invoke(*args, ok=True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok and res.exit_code != 0:
        raise AssertionError(f"exit {res.exit_code}: {res.stderr}\n{res.stdout}")
    return res


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("budgets")
    cfg = d / "small.yaml"
    cfg.write_text(f"""
data: {{dataset: digits, bs: 8, sb: 0, eb: 0, calibration_size: 64}}
optimize: {{time_limit: 30}}
cache_dir: {d / 'cache'}
device: cpu
""")
    invoke("prep", "clado", "-c", cfg, "-q")
    cache = next(p for p in (d / "cache").iterdir() if (p / "manifest.json").is_file())
    manifest = json.loads((cache / "manifest.json").read_text())
    macs = json.loads((cache / "layer_costs.json").read_text())["macs"]
    return d, cfg, cache, manifest, macs


def decisions(res):
    out = json.loads(res.stdout)
    return out if isinstance(out, list) else [out]


def test_size_and_bops_budgets_together_resolve_rel_and_report_every_cost(setup):
    d, cfg, cache, manifest, macs = setup
    res = invoke("optimize", "-c", cfg, "-m", "clado,naive", "--avg-bits", "4", "--bops-budget", "rel:0.3", "--json", "-q")
    names = [n for n, _ in manifest["layers"]["decided"]]
    a = manifest["quant"]["activation_bits"]
    cands = manifest["candidates"]
    low = sum(macs[n] * min(cands) * a for n in names)
    high = sum(macs[n] * max(cands) * a for n in names)
    for dec in decisions(res):
        (bound,) = dec["budget"]["bounds"]
        assert bound["name"] == "bops" and bound["given"] == "rel:0.3"
        assert bound["bound"] == np.floor(low + 0.3 * (high - low))
        bops = sum(macs[n] * dec["layers"][n]["w_bits"] * a for n in names)
        assert dec["costs"]["decided"]["bops"] == bops == dec["costs"]["bops"]["decided"]
        by = {c["name"]: c for c in dec["constraints"]}
        assert set(by) == {"size", "bops"}
        assert by["bops"]["value"] == bops <= bound["bound"]
        assert by["size"]["value"] == dec["sizes"]["decided_bytes"] <= dec["budget"]["bytes"]
        assert dec["solver"]["optimal"] and any(c["binding"] for c in dec["constraints"])
        assert dec["budget"]["given"] == "avg:4+bops=rel:0.3"


def latency_table(path, manifest):
    """A table not monotone in the width: 4 bits slower than 8 bits on every other layer."""
    rows = ["layer,w_bits,value"]
    for i, (n, k) in enumerate(manifest["layers"]["decided"]):
        for b in manifest["candidates"]:
            v = k * (1e-5 * b) if i % 2 else k * {2: 3e-5, 4: 5e-5, 8: 4e-5}[b]
            rows.append(f"{n},{b},{v!r}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_user_cost_table_bounds_the_program_and_sweeps_with_the_size_fixed(setup):
    d, cfg, cache, manifest, macs = setup
    table = latency_table(d / "latency.csv", manifest)
    res = invoke("optimize", "-c", cfg, "-m", "clado", "--size-budget", "rel:0.8", "--cost", f"latency={table}",
                 "--budget", "latency=rel:0.1:0.7:0.3", "--json", "-q")
    decs = decisions(res)
    assert [x["budget"]["bounds"][0]["given"] for x in decs] == ["rel:0.1", "rel:0.4", "rel:0.7"]
    lat = {(r.split(",")[0], int(r.split(",")[1])): float(r.split(",")[2]) for r in table.read_text().split()[1:]}
    values = []
    for dec in decs:
        used = sum(lat[(n, v["w_bits"])] for n, v in dec["layers"].items())
        c = {c["name"]: c for c in dec["constraints"]}["latency"]
        assert c["value"] == pytest.approx(used, rel=1e-12) and used <= c["bound"] + 1e-12
        assert dec["cost_tables"]["latency"]["file"] == str(table) and len(dec["cost_tables"]["latency"]["sha256"]) == 64
        assert len({x["budget"]["bytes"] for x in decs}) == 1  # the size stays fixed
        values.append(dec["predicted_loss_increase"])
    # a looser bound is a relaxation: the proven optimum never gets worse
    assert all(a >= b - 1e-9 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("args, message", [
    (["--bops-budget", "1G:2G:0.5G", "--budgets", "avg:3,4"], "only one cost can be swept at a time"),
    (["--avg-bits", "4", "--budget", "latency=3"], "unknown cost 'latency'"),
    (["--avg-bits", "4", "--budget", "size=4MB"], "the size is bounded with --size-budget"),
    (["--avg-bits", "4", "--bops-budget", "1"], "bops budget 1 BOPs is below the smallest possible bops"),
    (["--avg-bits", "4", "--bops-budget", "rel:1.5"], "the fraction must lie in 0..1"),
    (["--avg-bits", "4", "--budget", "latency"], "give NAME=VALUE"),
    (["--size-budget", "rel:0", "--bops-budget", "rel:0", "--cost", "slow={slow}", "--budget", "slow=rel:0"],
     "no choice meets every budget at once"),
])
def test_budget_errors_are_one_line(setup, args, message):
    d, cfg, cache, manifest, macs = setup
    slow = d / "slow.csv"  # the narrowest width is the slowest everywhere
    slow.write_text("layer,w_bits,value\n" + "".join(f"{n},{b},{10 - b}\n" for n, _ in manifest["layers"]["decided"]
                                                      for b in manifest["candidates"]))
    res = invoke("optimize", "-c", cfg, "-m", "naive", "-q", *[a.format(slow=slow) for a in args], ok=False)
    assert res.exit_code == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr


def test_ties_and_per_layer_widths_constrain_every_method(setup, tmp_path):
    d, cfg, cache, manifest, macs = setup
    names = [n for n, _ in manifest["layers"]["decided"]]
    down = next(n for n in names if "downsample" in n)
    conv1 = down.replace("downsample.0", "conv1")
    pinned = names[0]
    c2 = tmp_path / "tied.yaml"
    c2.write_text(cfg.read_text() + f"""
layers:
  tie_shared_input: true
  widths: {{"{pinned}": [8]}}
""")
    res = invoke("optimize", "-c", c2, "-m", "clado,naive", "--avg-bits", "3", "--json", "-q")
    for dec in decisions(res):
        assert dec["layers"][pinned]["w_bits"] == 8
        assert dec["layers"][conv1]["w_bits"] == dec["layers"][down]["w_bits"]
        assert [conv1, down] in dec["restrictions"]["ties"] and dec["restrictions"]["widths"] == {pinned: [8]}
        assert dec["sizes"]["decided_bytes"] <= dec["budget"]["bytes"]
    # the same program without the restrictions picks differently for at least one method
    free = decisions(invoke("optimize", "-c", cfg, "-m", "clado,naive", "--avg-bits", "3", "--json", "-q"))
    assert any(a["layers"] != b["layers"] for a, b in zip(decisions(res), free))


def test_the_round_trip_through_csv_keeps_user_cost_budgets(setup, tmp_path):
    """inspect -> CSV -> optimize --sensitivities with a latency table and bound gives the cache's decision."""
    d, cfg, cache, manifest, macs = setup
    table = latency_table(tmp_path / "latency.csv", manifest)
    invoke("inspect", "-c", cfg, "--csv", tmp_path / "sens.csv", "--csv-pairs", tmp_path / "pairs.csv", "-q")
    args = ["--avg-bits", "4", "--cost", f"latency={table}", "--budget", "latency=rel:0.3", "--json", "-q"]
    for m in ("clado", "naive"):
        a = decisions(invoke("optimize", "-c", cfg, "-m", m, *args))[0]
        b = decisions(invoke("optimize", "-c", cfg, "-m", m, "--sensitivities", tmp_path / "sens.csv",
                             "--pairs", tmp_path / "pairs.csv", *args))[0]
        assert a["layers"] == b["layers"] and a["predicted_loss_increase"] == b["predicted_loss_increase"]
        assert a["budget"] == b["budget"] and a["constraints"] == b["constraints"]
    res = invoke("optimize", "-c", cfg, "-m", "naive", "--sensitivities", tmp_path / "sens.csv", "--avg-bits", "4",
                 "--bops-budget", "rel:0.5", "-q", ok=False)
    assert res.exit_code == 2 and "needs the layers' MACs" in res.stderr


def test_refine_measures_the_k_best_and_keeps_the_lowest_measured(setup):
    d, cfg, cache, manifest, macs = setup
    res = invoke("optimize", "-c", cfg, "-m", "clado,naive", "--avg-bits", "3", "--refine", "4", "--json", "-q")
    for dec in decisions(res):
        r = dec["refine"]
        assert r["k"] == 4 and r["found"] == 4 and r["batches"] == dec["cache"]["batches"] == [0]
        cands = r["candidates"]
        assert len({json.dumps(c["w_bits"], sort_keys=True) for c in cands}) == 4  # distinct
        predicted = [c["predicted_loss_increase"] for c in cands]
        assert predicted == sorted(predicted)  # the K best, in the program's order
        best = min(range(4), key=lambda i: (cands[i]["measured_loss_increase"], i))
        assert r["chosen_rank"] == best and r["changed"] == (best != 0)
        assert {n: v["w_bits"] for n, v in dec["layers"].items()} == cands[best]["w_bits"]
        assert dec["predicted_loss_increase"] == predicted[best]
    bad = invoke("optimize", "-c", cfg, "-m", "naive", "--avg-bits", "3", "--refine", "3", "--cache", cache, "-q", ok=False)
    assert bad.exit_code == 2 and "--refine measures each decision" in bad.stderr
