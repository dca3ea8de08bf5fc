"""Activation checkpointing (smp3d.base.checkpointing): same step, less saved memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.base.checkpointing import encoder_units


def _model(name="Unet", **kwargs):
    torch.manual_seed(0)
    kwargs = dict(encoder_depth=3, in_channels=1, classes=2) | kwargs
    if name in ("Unet", "UnetPlusPlus"):
        kwargs.setdefault("decoder_channels", (32, 16, 8))
    return getattr(smp3d, name)("resnet18", **kwargs)


def _step(model, x):
    """Loss, input and parameter gradients of one training step, and the bytes autograd saved."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, sum(saved)


@pytest.mark.parametrize("name", ["Unet", "FPN", "UnetPlusPlus", "DeepLabV3Plus"])
def test_checkpointing_gives_the_same_step_with_less_saved(name):
    x = torch.randn(2, 1, 32, 32, 32)
    plain, checkpointed = _model(name), _model(name)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.set_checkpointing(encoder=True, decoder=True) is checkpointed
    assert checkpointed.encoder_checkpointing and checkpointed.decoder_checkpointing
    loss, grads, saved = _step(plain, x)
    loss_c, grads_c, saved_c = _step(checkpointed, x)
    torch.testing.assert_close(loss_c, loss)
    for key in grads:
        torch.testing.assert_close(grads_c[key], grads[key], rtol=1e-4, atol=1e-5)
    # Running statistics were updated once per step, as without checkpointing.
    for (key, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=key)
    assert saved_c < 0.6 * saved, (saved_c, saved)  # the heads (full-resolution) are not checkpointed
    assert list(checkpointed.state_dict()) == list(plain.state_dict())


def test_checkpointing_switches_off_and_skips_inference():
    model = _model()
    model.encoder_checkpointing = True
    assert model.encoder_checkpointing and not model.decoder_checkpointing
    wrapped = [m for m in model.modules() if "forward" in m.__dict__]
    units = encoder_units(model.encoder)
    # ResNet-18, depth 3: the stem conv, then layer1's and layer2's blocks (the max-pool has no parameters)
    assert len(units) == 5 and [id(m) for m in wrapped] == [id(m) for m in units]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32, 32))  # eval/no-grad: the plain forward
    model.encoder_checkpointing = False
    assert not any("forward" in m.__dict__ for m in model.modules())
    with pytest.raises(ValueError, match="True or False"):
        model.set_checkpointing(decoder="yes")


def test_encoder_without_stages_is_refused():
    model = _model()

    class NoStages(nn.Module):
        depth = 3

        def stage_modules(self, stage):
            raise NotImplementedError

    model.encoder = NoStages()
    with pytest.raises(ValueError, match="stage_modules"):
        model.set_checkpointing(encoder=True)
