"""§3.3's first valley on constructed histograms with known answers."""

import numpy as np
import pytest
import torch

from pruning.threshold import first_valley, histogram


def _from_counts(counts, bin_width=0.01):
    """γ values placed at bin centres so that the histogram is exactly `counts`."""
    values = [(j + 0.5) * bin_width for j, c in enumerate(counts) for _ in range(c)]
    return torch.tensor(values)


def test_histogram_matches_numpy():
    values = torch.rand(5000, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    expected, _ = np.histogram(np.abs(values.numpy()).astype(np.float64), bins=100, range=(0.0, 1.0))
    assert histogram(values).tolist() == expected.tolist()


def test_value_equal_to_upper_counts_in_last_bin_and_above_is_ignored():
    counts = histogram(torch.tensor([1.0, 1.0, 1.5, 0.0]), bin_width=0.25, upper=1.0)
    assert counts.tolist() == [1, 0, 0, 2]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([50, 20, 3, 9, 30] + [0] * 95, 0.02),  # a clear valley after the peak at 0
        ([50, 2, 2, 40] + [0] * 96, 0.01),  # a flat valley: the first bin of it
        ([10, 9, 8, 7, 6] + [0] * 95, 0.05),  # decreasing into an empty tail
        ([0, 5, 5, 1, 7] + [0] * 95, 0.03),  # bin 1: 5 > 0; bin 2: 5 > 1; bin 3: 1 ≤ 5 and 1 ≤ 7
    ],
)
def test_first_valley_on_constructed_histograms(counts, expected):
    assert first_valley(_from_counts(counts)) == pytest.approx(expected)


def test_first_valley_none_when_counts_only_increase():
    gammas = _from_counts([1, 2, 3, 4], bin_width=0.25)
    assert first_valley(gammas, bin_width=0.25, upper=1.0) is None


def test_first_valley_uses_absolute_values():
    gammas = _from_counts([30, 2, 40] + [0] * 97)
    assert first_valley(-gammas) == pytest.approx(first_valley(gammas)) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("gammas", "message"),
    [(torch.tensor([]), "no scaling factors"), (torch.tensor([0.1, float("nan")]), "NaN")],
)
def test_bad_input_raises(gammas, message):
    with pytest.raises(ValueError, match=message):
        first_valley(gammas)


def test_bad_bin_width_raises():
    with pytest.raises(ValueError, match="bin_width"):
        first_valley(torch.tensor([0.1]), bin_width=0.0)
