"""The same computations on a CUDA device as on the CPU (skipped where no GPU is present; CI has none).

Models run in float64, where the GPU uses no TF32 shortcuts, so results agree with the CPU to round-off and
rankings are identical.
"""
import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlusFlat

from crp._features.store import ResultStore
from crp._features.topk import TopK
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.evaluation import ConceptFaithfulness, PixelFlipping, RegionPerturbation
from crp.visualization import FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet, small_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-9, atol=1e-12)


def test_conditional_attribution_and_generate_match_the_cpu():
    cpu_model = small_cnn()
    gpu_model = small_cnn().to(CUDA)
    data = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    conditions = [{"2": [c], "y": [1]} for c in range(6)]
    results = []
    for model, x in ((cpu_model, data), (gpu_model, data.to(CUDA))):
        attribution = CondAttribution(model)
        call = attribution(x.clone().requires_grad_(), conditions, EpsilonPlusFlat(), record_layer=["0", "5"])
        parts = list(attribution.generate(x[:1].clone().requires_grad_(), conditions, EpsilonPlusFlat(),
                                          record_layer=["0"], batch_size=4, verbose=False))
        results.append((call, torch.cat([p.heatmap for p in parts])))
    (cpu_call, cpu_generated), (gpu_call, gpu_generated) = results
    assert gpu_call.heatmap.device.type == "cuda"
    close(gpu_call.heatmap, cpu_call.heatmap)
    close(gpu_call.prediction, cpu_call.prediction)
    for name in ("0", "2", "5"):
        close(gpu_call.relevances[name], cpu_call.relevances[name])
        close(gpu_call.activations[name], cpu_call.activations[name])
    close(gpu_generated, cpu_generated)
    close(gpu_generated, gpu_call.heatmap[:6])  # the first sample's rows


def test_top_k_on_the_gpu_is_identical_to_the_cpu():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 4, (200, 7), generator=generator).float()  # many ties
    indices, neurons = torch.randperm(200, generator=generator), torch.randint(0, 9, (200, 7), generator=generator)
    groups = torch.randint(0, 5, (200,), generator=generator)
    accumulators = {device: TopK(6, 7, slack=2) for device in ("cpu", "cuda")}
    for start in range(0, 200, 32):
        part = slice(start, start + 32)
        for device, accumulator in accumulators.items():
            accumulator.add(values[part].to(device), indices[part].to(device), neurons[part].to(device),
                            groups[part].to(device))
    for group in range(5):
        for a, b in zip(accumulators["cpu"].result(group), accumulators["cuda"].result(group)):
            assert torch.equal(a, b.cpu())
    exported = [accumulators[d].to_tensors([0, 3, 9], [6, 2, 1]) for d in ("cpu", "cuda")]
    for name in ("index", "value", "neuron"):
        torch.testing.assert_close(exported[0][name], exported[1][name].cpu(), rtol=0, atol=0, equal_nan=True)


def test_feature_visualization_on_the_gpu_stores_the_cpu_results(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    stores = {}
    for device in ("cpu", "cuda"):
        model = model.to(device)
        fv = FeatureVisualization(CondAttribution(model), TensorData(), {name: ChannelConcept() for name in LAYERS},
                                  path=tmp_path / device, top_k=5, device=torch.device(device))
        fv.run(EpsilonPlusFlat(), 0, 64, batch_size=16, checkpoint=2, verbose=False)
        stores[device] = ResultStore(tmp_path / device)
        references = fv.get_max_reference([0, 1], "conv2", "relevance", (0, 3), composite=EpsilonPlusFlat(),
                                          plot_fn=None)
        samples, heatmaps = references[1]
        assert len(samples) == 3 and len(heatmaps) == 3
    assert stores["cpu"].manifest["counts"] == stores["cuda"].manifest["counts"]
    for layer in LAYERS:
        cpu, gpu = (np.asarray(stores[d].layer_arrays(layer)["max"]) for d in ("cpu", "cuda"))
        np.testing.assert_array_equal(cpu["index"], gpu["index"])
        np.testing.assert_allclose(cpu["value"], gpu["value"], rtol=1e-6)
        cpu, gpu = (np.asarray(stores[d].layer_arrays(layer)["stats"]) for d in ("cpu", "cuda"))
        np.testing.assert_array_equal(cpu["index"], gpu["index"])
        np.testing.assert_array_equal(cpu["neuron"], gpu["neuron"])


@pytest.mark.parametrize("metric", [PixelFlipping(perturbation="constant", steps=8),
                                    PixelFlipping(perturbation="random", order="random", steps=8, seed=3),
                                    RegionPerturbation(perturbation="inpainting", region_size=2, steps=6)])
def test_perturbation_metrics_match_the_cpu(metric):
    model = small_cnn()
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=generator)
    heatmaps = torch.randn(5, 8, 8, dtype=torch.float64, generator=generator)
    cpu = metric(model, inputs, heatmaps, targets=[0, 1, 2, 3, 4])
    gpu = metric(model.to(CUDA), inputs.to(CUDA), heatmaps.to(CUDA), targets=[0, 1, 2, 3, 4])
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gpu.auc, cpu.auc, rtol=1e-6, atol=1e-9)


def test_concept_faithfulness_matches_the_cpu():
    results = []
    for device in ("cpu", "cuda"):
        model = small_cnn().to(device)
        inputs = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        metric = ConceptFaithfulness("2", steps=4)
        results.append(metric(CondAttribution(model), inputs.to(device), [1, 2], [0, 3], EpsilonPlusFlat()))
    np.testing.assert_allclose(results[1].scores, results[0].scores, rtol=1e-6, atol=1e-9)
