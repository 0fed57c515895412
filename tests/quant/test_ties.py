"""Shared-input ties found by one hooked forward pass, and one set-up's constraints."""
import pytest
import torch
import torch.nn as nn

from clado_cli.config import LayersConfig
from clado_cli.errors import UsageError
from clado_cli.quant.layers import QUANTIZABLE
from clado_cli.quant.ties import layer_constraints, shared_input_groups


def _names(model):
    return [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


@pytest.fixture(scope="module")
def resnet18():
    import torchvision

    return torchvision.models.resnet18(weights=None).eval()


def test_resnet18_ties_conv1_and_downsample_of_each_downsampling_block(resnet18):
    x = torch.zeros(1, 3, 64, 64)
    got = shared_input_groups(resnet18, _names(resnet18), x)
    assert got == [[f"layer{n}.0.conv1", f"layer{n}.0.downsample.0"] for n in (2, 3, 4)]
    # only decided layers take part: without the downsample convs, nothing is tied
    decided = [n for n in _names(resnet18) if "downsample" not in n]
    assert shared_input_groups(resnet18, decided, x) == []


class MyConv(nn.Conv2d):
    """A user's subclass, as models in the wild have them."""


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = MyConv(8, 8, 1)
        self.right = nn.Conv2d(8, 8, 3, padding=1, groups=8)       # depthwise
        self.third = nn.Conv2d(8, 8, 1)
        self.after = nn.Conv2d(8, 8, 1)                             # reads a new tensor
        self.view_reader = nn.Conv2d(8, 8, 1)                       # reads a view of it: not the same tensor
        self.fc = nn.Linear(8, 4)
        self.fc_twin = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        s = self.left(h) + self.right(h) + self.third(h)
        t = self.after(s) + self.view_reader(s[:, :, :, :])
        p = t.mean((2, 3))
        return self.fc(p) + self.fc_twin(p)


def test_branching_model_with_a_subclass_and_a_depthwise_conv():
    m = Branchy().eval()
    x = torch.zeros(2, 3, 8, 8)
    assert shared_input_groups(m, _names(m), x) == [["left", "right", "third"], ["fc", "fc_twin"]]
    assert shared_input_groups(m, ["right", "third", "after"], x) == [["right", "third"]]


class Reused(nn.Module):
    """One conv called twice: on the input (with `a`) and on its own output (with `b`)."""

    def __init__(self):
        super().__init__()
        self.a, self.shared, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.shared(x) + self.a(x)
        z = self.shared(y)
        return (z + self.b(y)).flatten(1)


def test_a_layer_called_twice_links_both_of_its_inputs():
    m = Reused().eval()
    assert shared_input_groups(m, ["a", "shared", "b"], torch.zeros(1, 3, 4, 4)) == [["a", "shared", "b"]]


def test_layer_constraints_of_a_set_up(resnet18):
    names = [n for n in _names(resnet18)][1:-1]
    x = torch.zeros(1, 3, 64, 64)
    cfg = LayersConfig(tie=[["layer1.0.conv1", "layer1.0.conv2"], ["layer2.0.conv1", "layer2.1.conv1"]],
                       tie_shared_input=True, widths={"layer1.*": [4, 8], "layer1.0.conv2": [2, 4]})
    c = layer_constraints(resnet18, names, cfg, [2, 4, 8], x)
    ix = {n: i for i, n in enumerate(names)}
    assert [[names[i] for i in g] for g in c.ties] == [
        ["layer1.0.conv1", "layer1.0.conv2"],
        ["layer2.0.conv1", "layer2.0.downsample.0", "layer2.1.conv1"],
        ["layer3.0.conv1", "layer3.0.downsample.0"], ["layer4.0.conv1", "layer4.0.downsample.0"]]
    assert c.sources == [["layers.tie[0]"], ["layers.tie[1]", "shared input"], ["shared input"], ["shared input"]]
    # layer1.0.conv1 allows 4, 8 and its tie partner 2, 4: both get 4
    assert c.allowed[ix["layer1.0.conv1"]] == [4] == c.allowed[ix["layer1.0.conv2"]]
    assert c.allowed[ix["layer1.1.conv1"]] == [4, 8] and c.allowed[ix["layer2.0.conv1"]] == [2, 4, 8]
    assert c.tie_of()[ix["layer3.0.downsample.0"]] == 3 and c.tie_of()[ix["layer1.1.conv1"]] is None
    # without tie_shared_input no forward pass runs at all
    plain = layer_constraints(None, names, LayersConfig(), [2, 4, 8])
    assert plain.ties == [] and plain.allowed == [[2, 4, 8]] * len(names)
    with pytest.raises(UsageError, match="tie group 1 .*no width every layer allows"):
        layer_constraints(resnet18, names, LayersConfig(tie=[["layer1.0.*"]], widths={"layer1.0.conv1": [2],
                                                                                     "layer1.0.conv2": [8]}), [2, 4, 8], x)
