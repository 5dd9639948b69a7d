"""Domain distance: BatchNorm feature statistics (images) and sub-word tokens per word (text)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.experiments.domain import FEATURE_FAR, feature_statistics_shift, tokens_per_word


def net_fitted_to(data: torch.Tensor) -> nn.Module:
    """conv -> BatchNorm whose running statistics are exactly those of ``data``'s conv outputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU(), nn.Conv2d(4, 2, 1),
                        nn.BatchNorm2d(2, momentum=None))
    net.train()
    with torch.no_grad():
        net(data)  # momentum=None: cumulative average, i.e. the exact statistics of this one batch
    # running_var is unbiased; make it the population variance the measure uses
    n1 = data.shape[0] * 30 * 30
    net[1].running_var *= (n1 - 1) / n1
    net[4].running_var *= (n1 - 1) / n1
    return net.eval()


def test_feature_shift_is_zero_on_the_pretraining_data_and_grows_with_the_shift():
    data = torch.randn(16, 3, 32, 32)
    net = net_fitted_to(data)
    same = feature_statistics_shift(net, [data[:8], data[8:]])
    assert same.measure == "feature statistics" and same.value == pytest.approx(0, abs=1e-3)
    assert not same.far
    shifted = feature_statistics_shift(net, [data * 3 + 2]).value
    more = feature_statistics_shift(net, [data * 6 + 5]).value
    assert FEATURE_FAR < shifted < more
    assert not net.training  # mode restored
    assert not net[1]._forward_hooks  # hooks removed


def test_feature_shift_leaves_running_statistics_alone_and_needs_batchnorm():
    data = torch.randn(4, 3, 32, 32)
    net = net_fitted_to(data).train()
    before = net[1].running_mean.clone()
    feature_statistics_shift(net, [data + 5])
    assert torch.equal(net[1].running_mean, before) and net.training
    assert feature_statistics_shift(nn.Sequential(nn.Conv2d(3, 2, 3), nn.LayerNorm([2, 30, 30])), [data]) is None


class SplitTokenizer:
    """Splits words longer than 4 characters into 4-character pieces."""

    def __call__(self, text, **kwargs):
        return {"input_ids": [1 for word in text.split() for _ in range(0, len(word), 4)]}


def test_tokens_per_word_counts_subword_pieces():
    tokenizer = SplitTokenizer()
    close = tokens_per_word(tokenizer, ["the cat sat on the mat"])
    assert close.value == 1.0 and not close.far
    far = tokens_per_word(tokenizer, ["phosphorylation of Ser473 kinases"])  # 4+1+2+2 pieces over 4 words
    assert far.value == pytest.approx(9 / 4) and far.far
    assert tokens_per_word(tokenizer, ["", "  "]) is None
