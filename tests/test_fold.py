"""Inference-time BatchNorm folding (smp3d.base.fold)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.base.fold import foldable_pairs


def _with_statistics(model, x):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(2):
            model(x + torch.randn_like(x))
    return model.eval()


@pytest.mark.parametrize(
    "name, spatial_dims", [("Unet", 3), ("FPN", 3), ("DeepLabV3Plus", 3), ("Linknet", 2), ("PSPNet", 2)]
)
def test_folded_model_computes_the_same(name, spatial_dims):
    torch.manual_seed(0)
    extra = dict(decoder_channels=(32, 16, 8)) if name == "Unet" else {}
    model = getattr(smp3d, name)(
        "resnet18", encoder_depth=3, in_channels=1, classes=3, spatial_dims=spatial_dims, **extra
    )
    x = torch.randn(1, 1, *(32,) * spatial_dims)
    _with_statistics(model, x.expand(2, *x.shape[1:]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = smp3d.fold_batchnorm(model, x)
    norms = lambda m: sum(isinstance(n, nn.modules.batchnorm._BatchNorm) for n in m.modules())  # noqa: E731
    assert norms(folded) < norms(model) and not folded.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        y = torch.randn(2, 1, *(40,) * spatial_dims)  # another shape works too
        torch.testing.assert_close(folded(y), model(y), rtol=1e-4, atol=1e-4)
    # The original is untouched.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Shared(nn.Module):
    """conv -> bn, but the conv output is also added back: not foldable. And a reused block."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.conv3 = nn.Conv2d(2, 2, 1)
        self.bn3 = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        y = self.bn(y) + y
        y = self.bn2(self.conv2(y))  # the one foldable pair
        return self.bn3(self.conv3(self.conv3(y)))  # conv3 runs twice


def test_only_exclusive_single_use_pairs_fold():
    model = _Shared()
    x = torch.randn(1, 2, 8, 8)
    assert foldable_pairs(model, x) == [("conv2", "bn2")]
    _with_statistics(model, x)
    folded = smp3d.fold_batchnorm(model, x, inplace=False)
    assert isinstance(folded.bn2, nn.Identity) and isinstance(folded.bn, nn.BatchNorm2d)
    assert folded.conv2.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    assert smp3d.fold_batchnorm(model, x, inplace=True) is model
