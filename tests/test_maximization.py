"""The peak-neuron search of the maximization against ``torch.max``, ties and NaN included."""
import pytest
import torch

from crp._attribution.concepts import _BLOCK, _TWO_STEP_FROM, channel_peaks


@pytest.mark.parametrize("neurons", [1, 7, _TWO_STEP_FROM - 1, _TWO_STEP_FROM, 4096, _TWO_STEP_FROM + _BLOCK + 5])
def test_peaks_equal_torch_max(neurons):
    generator = torch.Generator().manual_seed(neurons)
    flat = torch.randint(-4, 5, (3, 6, neurons), generator=generator).float()  # many ties: the first one wins
    flat[0, 1] = 2.0  # all equal
    flat[1, 2, -1] = 9.0  # the maximum in the tail after the last whole block
    flat[1, 3, 0] = flat[1, 3, -1] = 9.0  # a tie between the first block and the tail
    flat[2, 4, neurons // 2] = float("nan")  # NaN wins, as in torch.max
    flat[2, 5, -1] = float("nan")
    peak, index = channel_peaks(flat)
    expected_peak, expected_index = flat.max(-1) if neurons > 1 else (flat[..., 0], torch.zeros(3, 6).long())
    assert torch.equal(index, expected_index)
    assert torch.equal(peak.nan_to_num(-1.0), expected_peak.nan_to_num(-1.0))
    assert int(index[1, 3]) == 0 and int(index[0, 1]) == 0
