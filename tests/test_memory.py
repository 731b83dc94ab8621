"""The memory estimate of a batch (crp._features.memory): sizes derived by hand, linear in the batch size, and the
batch sizes suggested from it by FeatureVisualization and ``analyze --batch-size auto``."""
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat

from crp._features.memory import MemoryEstimate, estimate_memory, module_output_bytes, saved_tensor_bytes
from crp.app.analyze import AnalyzeError, AnalyzeOptions, prepare
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.visualization import FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_estimate_by_hand():
    """float32, per sample: the ReLU saves its output (8 values; the linear layers save only their weights, which
    need no gradient); the leaf outputs are 8 + 8 + 3 values; the largest output (8) twice; the input (4) twice."""
    estimate = estimate_memory(CondAttribution(mlp()), torch.randn(4))
    assert estimate == MemoryEstimate(per_sample=4 * (8 + (8 + 8 + 3) + 2 * 8 + 2 * 4), fixed=0,
                                      method="saved tensors")
    assert estimate.bytes_for(10) == 2040 and estimate.batch_size_for(2040) == 10
    assert estimate.batch_size_for(100) == 1  # never less than one


def test_estimate_is_linear_and_matches_the_tensor_sizes_measured_with_hooks():
    model = TinyNet().eval()
    attribution = CondAttribution(model)
    estimate = estimate_memory(attribution, torch.randn(1, 1, 8, 8), EpsilonPlusFlat())
    for batch in (1, 3, 8):
        data = torch.randn(batch, 1, 8, 8, requires_grad=True)
        with attribution.context(EpsilonPlusFlat()):
            saved = saved_tensor_bytes(lambda: model(data), exclude=list(model.parameters()))  # noqa: B023
            outputs, largest = module_output_bytes(model, lambda: model(data))  # noqa: B023
        measured = saved + outputs + 2 * largest + 2 * data.numel() * 4
        assert estimate.bytes_for(batch) == measured
    # every term grows with the batch: nothing is left over as a fixed cost
    assert estimate.fixed == 0 and estimate.per_sample > 4 * (4 * 8 * 8 + 5 * 4 * 4)


def test_parameters_are_not_counted():
    model = mlp()
    weights = model[0].weight.detach().requires_grad_()
    data = torch.randn(2, 4, requires_grad=True)
    counted = saved_tensor_bytes(lambda: torch.nn.functional.linear(data, weights))
    assert counted == 2 * 4 * 4 + 8 * 4 * 4  # input and weight
    assert saved_tensor_bytes(lambda: torch.nn.functional.linear(data, weights), exclude=[weights]) == 2 * 4 * 4


def test_feature_visualization_suggests_a_batch_size_that_fits(tmp_path):
    attribution = CondAttribution(TinyNet().double().eval())
    fv = FeatureVisualization(attribution, TensorData(), {name: ChannelConcept() for name in LAYERS}, path=tmp_path)
    sample = fv.get_data_sample(0)[0]
    estimate = estimate_memory(attribution, sample, EpsilonPlusFlat())
    budget = estimate.bytes_for(12) + estimate.per_sample // 2
    assert fv.suggest_batch_size(EpsilonPlusFlat(), memory=budget) == 12
    assert fv.suggest_batch_size(EpsilonPlusFlat(), memory=budget, maximum=5) == 5
    assert fv.suggest_batch_size(EpsilonPlusFlat(), memory=1) == 1
    assert fv.suggest_batch_size(EpsilonPlusFlat()) >= 1  # half the free memory of this machine
    with pytest.raises(ValueError, match="fraction must be"):
        fv.suggest_batch_size(fraction=2.0)
    assert list(tmp_path.iterdir()) == []


def test_analyze_batch_size_auto(tmp_path, caplog):
    options = AnalyzeOptions(model="helpers:tiny_model", data="helpers:tiny_data", image_size=16,
                             batch_size="auto", out=str(tmp_path / "out"))
    with caplog.at_level("INFO", logger="crp"):
        setup = prepare(options)
    assert 1 <= setup.batch_size <= 256
    assert f"--batch-size auto: {setup.batch_size} (about " in caplog.text
    with pytest.raises(AnalyzeError, match=r"--batch-size must be an int >= 1, got 0\. Or 'auto'\."):
        prepare(AnalyzeOptions(model="helpers:tiny_model", data="helpers:tiny_data", batch_size=0))


def test_cli_batch_size_values(capsys):
    from crp.app.cli import build_parser, main

    assert build_parser().parse_args(["analyze", "--model", "m", "--batch-size", "auto"]).batch_size == "auto"
    assert build_parser().parse_args(["analyze", "--model", "m", "--batch-size", "7"]).batch_size == 7
    assert main(["analyze", "--model", "m", "--data", "d", "--batch-size", "big"]) == 2
    assert "--batch-size: must be a positive whole number or auto, got 'big'" in capsys.readouterr().err
