"""decide(): every (method, budget) decision from the cache."""
from clado_cli.decide import decide
from clado_cli.optimize import resolve_budget
from clado_cli.prep import run_prep
from clado_cli.store.cache import Cache


def test_clado_and_naive_read_the_cached_batches_once_and_match_separate_runs(small_cfg, monkeypatch):
    from clado_cli.session import Session

    s = Session(small_cfg())
    run_prep(s, "clado", 0, 1)
    total = sum(l.numel for l in s.plan.decided)
    budgets = [resolve_budget(None, 3.0, total), resolve_budget(None, 5.0, total)]
    separate = [d for m in ("clado", "naive") for d in decide(s.cache, [m], budgets, psd="shift")]

    reads = []
    real = Cache.read_batch
    monkeypatch.setattr(Cache, "read_batch", lambda self, kind, k: reads.append((kind.name, k)) or real(self, kind, k))
    together = decide(s.cache, ["clado", "naive"], budgets, psd="shift")
    assert sorted(reads) == [("clado", 0), ("clado", 1)]            # once, not once per method
    assert [d["method"] for d in together] == ["clado", "clado", "naive", "naive"]
    for a, b in zip(separate, together):
        assert a["layers"] == b["layers"] and a["cache"] == b["cache"]
        assert a["predicted_loss_increase"] == b["predicted_loss_increase"]
