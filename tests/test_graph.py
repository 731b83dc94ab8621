"""Tests of crp.graph: the layers that feed each layer, for hand-written expectations on real architectures."""
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from crp.graph import ModelGraph, trace_model_graph

METHODS = ("fx", "autograd")


def _layers(model, types=(nn.Conv2d, nn.Linear)):
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def _all_inputs(graph):
    return {name: graph.find_input_layers(name) for name in graph.layer_names}


# ---------------------------------------------------------------------------------------------------------------
# torchvision architectures (random weights, small inputs)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def densenet121():
    torch.manual_seed(0)
    return torchvision.models.densenet121(weights=None).eval()


IMAGE = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", METHODS)
def test_vgg16_is_a_chain(vgg16, method):
    convs = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    linears = ["classifier.0", "classifier.3", "classifier.6"]
    chain = convs + linears
    graph = trace_model_graph(vgg16, IMAGE, _layers(vgg16), method=method)
    assert graph.method == method
    assert graph.layer_names == chain
    expected = {name: ([chain[i - 1]] if i else []) for i, name in enumerate(chain)}
    assert _all_inputs(graph) == expected


@pytest.mark.parametrize("method", METHODS)
def test_resnet18_sees_both_branches_of_a_block(resnet18, method):
    graph = trace_model_graph(resnet18, IMAGE, _layers(resnet18), method=method)
    expected = {
        "conv1": [],
        "layer1.0.conv1": ["conv1"],
        "layer1.0.conv2": ["layer1.0.conv1"],
        # identity shortcut: the block input (conv1 after pooling) plus the main branch
        "layer1.1.conv1": ["conv1", "layer1.0.conv2"],
        # identity shortcuts chain back through both blocks of layer1
        "layer2.0.conv1": ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        "layer2.0.downsample.0": ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        # projection shortcut: the downsample conv ends the path
        "layer2.1.conv1": ["layer2.0.conv2", "layer2.0.downsample.0"],
        "layer4.1.conv2": ["layer4.1.conv1"],
        "fc": ["layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"],
    }
    assert {name: graph.find_input_layers(name) for name in expected} == expected


@pytest.mark.parametrize("method", METHODS)
def test_resnet18_with_batch_norms_listed(resnet18, method):
    graph = trace_model_graph(resnet18, IMAGE, _layers(resnet18, (nn.Conv2d, nn.BatchNorm2d)), method=method)
    assert graph.find_input_layers("layer1.0.conv1") == ["bn1"]
    assert graph.find_input_layers("layer1.1.conv1") == ["bn1", "layer1.0.bn2"]
    assert graph.find_input_layers("layer2.0.downsample.1") == ["layer2.0.downsample.0"]
    assert graph.find_input_layers("layer2.1.conv1") == ["layer2.0.bn2", "layer2.0.downsample.1"]


def _dense_expectations():
    """Every dense layer's first conv reads the block input and all earlier layers of its block (concatenated)."""
    expected, block_input = {"features.conv0": []}, "features.conv0"
    for block, size in enumerate((6, 12, 24, 16), start=1):
        prefix = f"features.denseblock{block}"
        produced = [block_input]
        for layer in range(1, size + 1):
            expected[f"{prefix}.denselayer{layer}.conv1"] = list(produced)
            expected[f"{prefix}.denselayer{layer}.conv2"] = [f"{prefix}.denselayer{layer}.conv1"]
            produced.append(f"{prefix}.denselayer{layer}.conv2")
        nxt = f"features.transition{block}.conv" if block < 4 else "classifier"
        expected[nxt] = produced
        block_input = nxt
    return expected


@pytest.mark.parametrize("method", METHODS)
def test_densenet121_lists_all_concatenated_inputs(densenet121, method):
    graph = trace_model_graph(densenet121, IMAGE, _layers(densenet121), method=method)
    expected = _dense_expectations()
    assert len(expected) == 121
    assert _all_inputs(graph) == expected


# ---------------------------------------------------------------------------------------------------------------
# small hand-built models


class FunctionalNet(nn.Module):
    """Functional ops only between the listed layers: F.relu, chunk, torch.cat, +, view, indexing, mean."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        a = F.relu(self.a(x))
        first, second = torch.chunk(a, 2, dim=1)
        mixed = torch.cat([second, first], dim=1) + self.b(x) * 0.5
        c = self.c(mixed)
        d = self.d(torch.cat([c, a], dim=1))
        return self.fc(d.view(d.shape[0], 2, -1).mean(-1)[:, :2])


class InceptionNet(nn.Module):
    """One inception block: four parallel branches concatenated, then a 1x1 conv and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch1 = nn.Conv2d(8, 4, 1)
        self.branch3 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.branch5 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(8, 4, 1))
        self.mix = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        x = F.relu(self.mix(torch.cat(branches, 1)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class BranchingNet(nn.Module):
    """Data-dependent control flow: the branch depends on the sign of the input's mean."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.up = nn.Linear(4, 4)
        self.down = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.stem(x)
        h = self.up(h) + h if x.mean() > 0 else self.down(h)
        for _ in range(int(x.abs().sum() > 0) + 1):  # data-dependent loop count: the head is applied twice
            h = torch.tanh(h)
        return self.head(h)


class SumStack(nn.Module):
    def forward(self, x):
        return x.sum(-1)


class ShortcutNet(nn.Module):
    """A tiny model with the structure of the FashionMNIST model: main branch, parallel branch, stacked sum."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.parallel = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, bias=False), nn.BatchNorm2d(4))
        self.relu = nn.ReLU()
        self.sum = SumStack()
        self.linear1 = nn.Linear(4 * 5 * 5, 6)
        self.linear2 = nn.Linear(6, 3)

    def forward(self, x):
        main = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = self.relu(self.sum(torch.stack([self.parallel(x), main], dim=-1)))
        return self.linear2(self.relu(self.linear1(out.flatten(1))))


class AliasNet(nn.Module):
    """Listed layers that return their input (Identity), change it in place (ReLU) or are called twice."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.same = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.act(self.same(self.lin(x)))
        return self.out(self.shared(self.shared(h)))


@pytest.mark.parametrize("method", METHODS)
def test_functional_ops(method):
    graph = trace_model_graph(FunctionalNet(), torch.rand(1, 1, 5, 5), ["a", "b", "c", "d", "fc"], method=method)
    assert _all_inputs(graph) == {"a": [], "b": [], "c": ["a", "b"], "d": ["a", "c"], "fc": ["d"]}


@pytest.mark.parametrize("method", METHODS)
def test_inception_branches(method):
    names = ["stem", "branch1", "branch3.0", "branch3.2", "branch5.0", "branch5.2", "branch_pool.1", "mix", "head"]
    graph = trace_model_graph(InceptionNet(), torch.rand(1, 3, 6, 6), names, method=method)
    assert graph.find_input_layers("mix") == ["branch1", "branch3.2", "branch5.2", "branch_pool.1"]
    assert graph.find_input_layers("branch_pool.1") == ["stem"]
    assert graph.find_input_layers("branch5.2") == ["branch5.0"]
    assert graph.find_input_layers("head") == ["mix"]


@pytest.mark.parametrize("method", METHODS)
def test_listed_containers_are_single_layers(method):
    names = ["stem", "branch1", "branch3", "branch5", "branch_pool", "mix"]
    graph = trace_model_graph(InceptionNet(), torch.rand(1, 3, 6, 6), names, method=method)
    assert graph.find_input_layers("mix") == ["branch1", "branch3", "branch5", "branch_pool"]


@pytest.mark.parametrize("method", METHODS)
def test_shortcut_model_like_the_fashion_model(method):
    model = ShortcutNet().eval()
    all_names = ["conv1", "bn1", "conv2", "bn2", "parallel.0", "parallel.1", "sum", "linear1", "linear2"]
    graph = trace_model_graph(model, torch.rand(1, 1, 14, 14), all_names, method=method)
    assert _all_inputs(graph) == {
        "conv1": [], "bn1": ["conv1"], "conv2": ["bn1"], "bn2": ["conv2"], "parallel.0": [],
        "parallel.1": ["parallel.0"], "sum": ["bn2", "parallel.1"], "linear1": ["sum"], "linear2": ["linear1"],
    }
    graph.set_layer_names(["conv1", "conv2", "parallel.0", "linear1", "linear2"])
    assert _all_inputs(graph) == {
        "conv1": [], "conv2": ["conv1"], "parallel.0": [], "linear1": ["conv2", "parallel.0"], "linear2": ["linear1"],
    }


def test_data_dependent_control_flow_falls_back_to_autograd(caplog):
    model = BranchingNet()
    with caplog.at_level(logging.DEBUG, logger="crp._graph.tracing"):
        graph = trace_model_graph(model, torch.ones(1, 4), ["stem", "up", "head"])
    assert graph.method == "autograd"
    assert "TraceError" in graph.fallback_reason
    assert "TraceError" in caplog.text and "autograd graph" in caplog.text
    assert _all_inputs(graph) == {"stem": [], "up": ["stem"], "head": ["stem", "up"]}
    assert "autograd graph of one forward pass (torch.fx failed: TraceError" in str(graph)

    graph = trace_model_graph(model, -torch.ones(1, 4), ["stem", "down", "head"])
    assert _all_inputs(graph) == {"stem": [], "down": ["stem"], "head": ["down"]}


def test_branch_not_taken_by_the_sample_is_an_error():
    with pytest.raises(ValueError, match=r"\['down'\] are not called in the forward pass of the sample"):
        trace_model_graph(BranchingNet(), torch.ones(1, 4), ["stem", "down", "head"])


def test_forcing_fx_on_control_flow_is_an_error():
    with pytest.raises(RuntimeError, match="torch.fx cannot trace the model .*use method='autograd'"):
        trace_model_graph(BranchingNet(), torch.ones(1, 4), ["stem", "up"], method="fx")


def test_fx_unused_module_is_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].unused = nn.Linear(2, 2)  # a child of a Linear is never called by it
    with pytest.raises(ValueError, match=r"\['1.unused'\] are never called .*traced by torch.fx"):
        trace_model_graph(model, torch.ones(1, 2), ["0", "1.unused"], method="fx")
    with pytest.raises(ValueError, match=r"\['1.unused'\] are not called in the forward pass"):
        trace_model_graph(model, torch.ones(1, 2), ["0", "1.unused"])


@pytest.mark.parametrize("method", METHODS)
def test_identity_inplace_and_shared_layers(method):
    graph = trace_model_graph(AliasNet(), torch.rand(2, 4), ["lin", "same", "act", "shared", "out"], method=method)
    assert _all_inputs(graph) == {
        "lin": [], "same": ["lin"], "act": ["same"], "shared": ["act", "shared"], "out": ["shared"],
    }


def test_autograd_layer_returning_a_tuple():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            y = self.lin(x)
            return y, -y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            first, second = self.pair(x)
            return self.head(first * second)

    graph = trace_model_graph(Net(), torch.rand(1, 3), ["pair", "head"], method="autograd")
    assert graph.find_input_layers("head") == ["pair"]


# ---------------------------------------------------------------------------------------------------------------
# state, summary and bad input


def test_autograd_tracing_leaves_the_model_unchanged():
    model = ShortcutNet().train()
    for param in model.parameters():
        param.requires_grad_(False)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    trace_model_graph(model, torch.rand(2, 1, 14, 14), ["conv1", "sum", "linear2"], method="autograd")
    assert all(not p.requires_grad for p in model.parameters())
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_autograd_tracing_cleans_up_after_an_exception():
    model = ShortcutNet()
    with pytest.raises(RuntimeError):
        trace_model_graph(model, torch.rand(1, 3, 14, 14), ["conv1", "linear2"], method="autograd")  # 3 channels
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_summary_and_debug_log(caplog):
    with caplog.at_level(logging.INFO, logger="crp._graph.tracing"):
        graph = trace_model_graph(FunctionalNet(), torch.rand(1, 1, 5, 5), ["a", "c", "fc"], debug=True)
    text = str(graph)
    assert text.splitlines() == [
        "ModelGraph of 3 layers, traced with torch.fx symbolic tracing",
        "  a  <- (model input)",
        "  c  <- a",
        "  fc <- a, c",
    ]
    assert text in caplog.text
    assert repr(graph) == "ModelGraph(method='fx', layers=3)"
    assert isinstance(graph, ModelGraph) and graph.fallback_reason is None


def test_unknown_layer_name_suggests_close_names():
    with pytest.raises(KeyError, match=r"'linear' is not a module of the model. Did you mean .*'linear1'"):
        trace_model_graph(ShortcutNet(), torch.rand(1, 1, 14, 14), ["conv1", "linear"])


@pytest.mark.parametrize("layer_names, error, message", [
    ("conv1", TypeError, r"got the string 'conv1'; wrap it in a list: \['conv1'\]"),
    ([], ValueError, "layer_names is empty; pass the layers"),
    (["conv1", 3], TypeError, r"must contain strings \(module names\), got \[3\]"),
    (["parallel", "parallel.0"], ValueError, "lists both 'parallel' and its sub-module 'parallel.0'"),
    (5, TypeError, "must be a list of layer names, got int"),
])
def test_bad_layer_names(layer_names, error, message):
    with pytest.raises(error, match=message):
        trace_model_graph(ShortcutNet(), torch.rand(1, 1, 14, 14), layer_names)


def test_bad_method_and_sample():
    with pytest.raises(ValueError, match=r"method must be one of 'auto', 'fx', 'autograd', got 'jit'"):
        trace_model_graph(ShortcutNet(), torch.rand(1, 1, 14, 14), ["conv1"], method="jit")
    with pytest.raises(TypeError, match=r"sample must be a torch.Tensor batch the model accepts, got \["):
        trace_model_graph(ShortcutNet(), [1.0], ["conv1"])


def test_querying_an_untraced_layer():
    graph = trace_model_graph(ShortcutNet(), torch.rand(1, 1, 14, 14), ["conv1", "conv2", "linear1"])
    with pytest.raises(KeyError, match="layer_name: layer 'conv3' is not in the model graph. Did you mean .*'conv1'"):
        graph.find_input_layers("conv3")
    with pytest.raises(KeyError, match="layer_names: layer 'bn1' is not in the model graph.*trace again"):
        graph.set_layer_names(["conv1", "bn1"])
    graph.layer_names = ["conv1", "linear1"]
    assert graph.find_input_layers("linear1") == ["conv1"]
    assert graph.find_input_layers("conv2") == ["conv1"]  # traced layers stay queryable


@pytest.mark.parametrize("method", METHODS)
def test_layer_node_map_and_dump_give_zennit_crp_views_of_the_graph(resnet18, method):
    from crp.graph import GraphNode, dump_pytorch_graph

    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    graph = trace_model_graph(resnet18, IMAGE, names, method=method)
    nodes = graph.layer_node_map
    assert nodes["layer1.1.conv1"] == GraphNode("layer1.1.conv1", ("conv1", "layer1.0.conv2"), ())
    assert nodes["conv1"].output_layers == ("layer1.0.conv1", "layer1.1.conv1")
    assert all(node.is_layer for node in nodes.values())
    table = dump_pytorch_graph(graph).splitlines()
    assert table[-1].split() == ["layer1.1.conv1", "<-", "conv1,", "layer1.0.conv2"]
    with pytest.raises(TypeError, match="graph must be a ModelGraph from trace_model_graph, got str"):
        dump_pytorch_graph("graph")
