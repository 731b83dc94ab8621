"""Messages that name the argument, the value and the fix: bad input meets an error that says what to do."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import load_maximization
from crp.visualization import CorruptStoreError, FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


def test_integer_data_is_told_to_convert():
    attribution = CondAttribution(small_model())
    with pytest.raises(TypeError, match=r"data must be a floating-point tensor .* got dtype torch.int64; convert it "
                                        r"first, e.g. data = data.float\(\).requires_grad_\(\)"):
        attribution(torch.zeros(1, 1, 8, 8, dtype=torch.int64), [{"y": [0]}])


def test_a_sample_of_the_wrong_size_names_the_layer_and_its_input():
    attribution = CondAttribution(small_model())
    with pytest.raises(ValueError, match=r"data of shape \(1, 1, 9, 9\) does not fit the model: shapes stopped "
                                         r"matching at layer '3' \(Linear, expects in_features=72\)"):
        attribution(torch.zeros(1, 1, 9, 9, requires_grad=True), [{"y": [0]}], EpsilonPlusFlat())
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in attribution.model.modules()) == 0
    assert len(torch.nn.modules.module._global_forward_pre_hooks) == 0


def test_nan_input_warns_and_bad_devices_are_named():
    attribution = CondAttribution(small_model())
    data = torch.zeros(1, 1, 8, 8)
    data[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"data holds NaN or infinite values \(1 of 64\)"):
        attribution(data.requires_grad_(), [{"y": [0]}])
    clean = torch.zeros(1, 1, 8, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribution(clean, [{"y": [0]}])  # no warning for clean input
    with pytest.raises(ValueError, match=r"on_device must be None, a torch.device or a device name .* got "
                                         r"'nonexistent'"):
        attribution(clean, [{"y": [0]}], on_device="nonexistent")


def test_feature_visualization_names_a_bad_device(tmp_path):
    torch.manual_seed(0)
    fv = FeatureVisualization(CondAttribution(TinyNet().double().eval()), TensorData(),
                              {name: ChannelConcept() for name in LAYERS}, path=tmp_path)
    with pytest.raises(ValueError, match=r"on_device must be .* got 'gpu0'"):
        fv.run(None, on_device="gpu0", verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_a_zeroed_store_file_is_corrupt_without_numpys_pickle_advice(tmp_path):
    torch.manual_seed(0)
    fv = FeatureVisualization(CondAttribution(TinyNet().double().eval()), TensorData(),
                              {name: ChannelConcept() for name in LAYERS}, path=tmp_path, top_k=4)
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    file = next(tmp_path.glob("results-*/conv1.max.npy"))
    file.write_bytes(bytes(file.stat().st_size))
    with pytest.raises(CorruptStoreError) as error:
        load_maximization(fv.RelMax.PATH, "conv1")
    assert "conv1.max.npy is truncated or corrupt" in str(error.value)
    assert "pickle" not in str(error.value)
    assert np.all(np.frombuffer(file.read_bytes(), np.uint8) == 0)  # nothing was changed


def test_a_composite_given_by_name_is_refused_with_the_fix():
    attribution = CondAttribution(small_model())
    with pytest.raises(TypeError, match=r"composite must be a zennit.core.Composite \(e.g. EpsilonPlusFlat\(\)\) or "
                                        r"None, got str"):
        attribution(torch.zeros(1, 1, 8, 8, requires_grad=True), [{"y": [0]}], "EpsilonPlusFlat")


TWO_D = r"must be an int or a 1-D list of ints, got ids of shape \(1, 512\); pass one row, e\.g\. ids\[0\]\.tolist\(\)"


@pytest.mark.parametrize("ids", [torch.zeros(1, 512, dtype=torch.long), np.zeros((1, 512), int), [[0] * 512]],
                         ids=["tensor", "array", "nested list"])
def test_two_dimensional_concept_ids_are_named_by_their_shape(tmp_path, ids):
    attribution = CondAttribution(TinyNet().double().eval())
    with pytest.raises(ValueError, match=r"conditions\[0\]\['conv1'\] " + TWO_D) as error:
        attribution(torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True), [{"conv1": ids, "y": [0]}],
                    EpsilonPlusFlat())
    assert len(str(error.value)) < 200  # the shape, not 512 ids
    with pytest.raises(ValueError, match="concept_ids " + TWO_D):
        ChannelConcept.mask(0, ids)
    fv = FeatureVisualization(attribution, TensorData(), {name: ChannelConcept() for name in LAYERS}, path=tmp_path,
                              top_k=2)
    fv.run(EpsilonPlusFlat(), 0, 8, verbose=False)
    with pytest.raises(ValueError, match="concept_ids " + TWO_D):
        fv.get_max_reference(ids, "conv1", "relevance", (0, 2))


def test_many_ids_out_of_range_are_summarized():
    attribution = CondAttribution(TinyNet().eval())
    with pytest.raises(IndexError, match=r"concept ids \[4, 5, 6, 7, \.\.\., 599\] \(596 ids\) are out of range for "
                                         r"layer 'conv1' with 4 channels; use ids in \[0, 3\]\.$"):
        attribution(torch.zeros(1, 1, 8, 8, requires_grad=True), [{"conv1": list(range(600)), "y": [0]}],
                    EpsilonPlusFlat())
    with pytest.raises(TypeError, match=r"expected an int or a list of ints, got a list of 300 items: "
                                        r"\[0\.5, 0\.5, 0\.5, 0\.5, \.\.\.\]\.$"):
        attribution(torch.zeros(1, 1, 8, 8, requires_grad=True), [{"conv1": [0.5] * 300, "y": [0]}])
