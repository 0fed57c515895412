"""Tie groups and per-layer widths: layer_constraints (no torch) and the config keys."""
import pytest

from clado_cli.config import load_config
from clado_cli.errors import ConfigError, UsageError
from clado_cli.layer_constraints import allowed_mask, resolve_ties, resolve_widths, tie_of, tie_widths

NAMES = ["a.conv1", "a.conv2", "a.down", "b.conv1", "b.conv2", "c.fc"]


def test_ties_from_globs_and_shared_groups_merge_transitively():
    assert resolve_ties(NAMES, [], []) == []
    assert resolve_ties(NAMES, [["a.conv1", "a.down"]]) == [[0, 2]]
    # a.conv2 with b.conv1 (config), b.conv1 with b.conv2 (shared): one group; order by first index
    got = resolve_ties(NAMES, [["b.conv1", "a.conv2"], ["c.*", "a.conv1"]], [["b.conv1", "b.conv2"]])
    assert got == [[0, 5], [1, 3, 4]]
    # chains across config groups merge too
    assert resolve_ties(NAMES, [["a.conv1", "a.conv2"], ["a.conv2", "b.*"]]) == [[0, 1, 3, 4]]
    # shared-input names that are not decided are ignored
    assert resolve_ties(NAMES, [], [["a.conv1", "fixed.layer"]]) == []
    assert tie_of([[0, 5], [1, 3, 4]], 6) == [1, 2, None, 2, 2, 1]


def test_a_tie_glob_matching_nothing_is_an_error_and_a_single_match_a_note():
    with pytest.raises(UsageError, match=r"layers.tie\[1\]: 'zz\*' matches no decided layer"):
        resolve_ties(NAMES, [["a.*"], ["b.conv1", "zz*"]])
    notes = []
    assert resolve_ties(NAMES, [["c.fc"]], notes=notes) == []
    assert notes == ["layers.tie[0] matches one decided layer (c.fc): it ties nothing"]


def test_widths_last_matching_entry_wins():
    assert resolve_widths(NAMES, [8, 2, 4], {}) == [[2, 4, 8]] * 6
    got = resolve_widths(NAMES, [2, 4, 8], {"*": [4, 8], "a.*": [2, 4], "a.down": [8]})
    assert got == [[2, 4], [2, 4], [8], [4, 8], [4, 8], [4, 8]]
    assert allowed_mask(got[:3], [2, 4, 8]) == [[True, True, False], [True, True, False], [False, False, True]]
    assert allowed_mask([[8, 2]], [8, 4, 2]) == [[True, False, True]]
    # the order of the entries decides, not how specific a glob is
    assert resolve_widths(NAMES, [2, 4, 8], {"a.down": [8], "a.*": [2]})[2] == [2]


@pytest.mark.parametrize("cfg,needle", [
    ({"a.*": [3]}, r"'a.\*': width 3 is not among the candidates \(2, 4, 8\)"),
    ({"zz": [4]}, "'zz' matches no decided layer"),
    ({"a.*": []}, r"'a.\*' allows no width"),
])
def test_widths_errors(cfg, needle):
    with pytest.raises(UsageError, match=needle):
        resolve_widths(NAMES, [2, 4, 8], cfg)


def test_tie_widths_intersects_and_names_an_empty_group():
    allowed = resolve_widths(NAMES, [2, 4, 8], {"a.conv1": [2, 4], "a.down": [4, 8]})
    assert tie_widths(NAMES, allowed, [[0, 2]])[:3] == [[4], [2, 4, 8], [4]]
    allowed = resolve_widths(NAMES, [2, 4, 8], {"a.conv1": [2], "a.down": [4, 8]})
    with pytest.raises(UsageError) as e:
        tie_widths(NAMES, allowed, [[1, 3], [0, 2]])
    msg = str(e.value)
    assert msg == "tie group 2 (a.conv1 [2], a.down [4,8]) has no width every layer allows (layers.widths)"


def test_config_keys_default_and_validate():
    c = load_config(None)
    assert c.layers.tie == [] and c.layers.tie_shared_input is False and c.layers.widths == {}
    c = load_config(None, {"layers.tie": [["a", "b*"]], "layers.widths": {"x": [8, 4]}, "layers.tie_shared_input": True})
    assert c.layers.widths == {"x": [8, 4]} and c.to_dict()["layers"]["tie"] == [["a", "b*"]]
    for o, needle in [({"layers.widths": {"x": [3]}}, "layers.widths: 'x': width 3 is not among quant.weight_candidates"),
                      ({"layers.widths": {"x": []}}, "allows no width"),
                      ({"layers.widths": {"x": [4, 4]}}, "distinct"),
                      ({"layers.tie": [[]]}, r"layers.tie: \[0\] is empty"),
                      ({"layers.tie": "a"}, "layers.tie"),
                      ({"layers.tie_shared_input": "yes"}, "layers.tie_shared_input"),
                      ({"layers.tied": []}, "layers.tied: unknown key")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(None, o)
    # candidates given in the same config count
    assert load_config(None, {"quant.weight_candidates": [3, 6], "layers.widths": {"x": [3]}}).layers.widths == {"x": [3]}


def test_ties_and_widths_leave_the_cache_fingerprint_alone(tmp_path):
    from clado_cli.session import Session

    f = tmp_path / "tiny.py"
    f.write_text("import torch.nn as nn\n"
                 "def make(num_classes=10):\n"
                 "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),\n"
                 "                         nn.Linear(4 * 4 * 4, 8), nn.Linear(8, num_classes))\n")
    base = {"model.name": f"{f}:make", "model.weights": "none", "model.num_classes": 10,
            "data.dataset": "synthetic:1x8x8", "device": "cpu", "cache_dir": str(tmp_path)}
    plain = Session(load_config(None, base))
    tied = Session(load_config(None, {**base, "layers.tie": [["2", "4"]], "layers.tie_shared_input": True,
                                      "layers.widths": {"2": [4, 8]}}))
    assert plain.plan.decided_names == ["2", "4"]
    assert tied.manifest == plain.manifest and tied.fingerprint == plain.fingerprint
