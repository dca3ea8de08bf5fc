"""smp3d-example-plugin: a third-party encoder family for smp3d, and the template for plugin authors.

smp3d finds it through two entry points (see ``pyproject.toml``):

- ``smp3d.encoders``: ``example = "smp3d_example_plugin:ENCODERS"``, fixed names;
- ``smp3d.encoder_resolvers``: ``examplew = "smp3d_example_plugin:resolve"``, open-ended
  names ``examplew-<base width>``.

>>> import smp3d, torch
>>> model = smp3d.Unet(encoder_name="example_vgg_tiny", in_channels=1, classes=2).eval()
>>> model(torch.randn(1, 1, 32, 32, 32)).shape
torch.Size([1, 2, 32, 32, 32])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from smp3d import EncoderSpec

from .encoder import ExampleVGGEncoder

__all__ = ["ENCODERS", "ExampleVGGEncoder", "resolve"]

_WIDTH = re.compile(r"[1-9][0-9]*")


def _spec(widths: Sequence[int], description: str) -> EncoderSpec:
    """An EncoderSpec of the VGG-style encoder with stage ``widths``; metadata is for depth 5, 3 input channels."""
    widths = tuple(widths)
    return EncoderSpec(
        build=partial(ExampleVGGEncoder, widths=widths),
        out_channels=(3, *widths),
        family="example",
        license="MIT",
        description=description,
    )


ENCODERS: dict[str, EncoderSpec] = {
    "example_vgg_tiny": _spec((16, 32, 64, 128, 256), "Example plugin: VGG-style, 2 convs per stage, widths 16..256"),
    "example_vgg_small": _spec((32, 64, 128, 256, 512), "Example plugin: VGG-style, 2 convs per stage, widths 32..512"),
}


def resolve(rest: str) -> EncoderSpec:
    """The spec for the name ``examplew-<rest>``: ``rest`` is the base width ``w`` of stage widths
    ``(w, 2w, 4w, 8w, 16w)``, e.g. ``examplew-8``."""
    if not _WIDTH.fullmatch(rest):
        raise ValueError(
            f"Invalid encoder name 'examplew-{rest}': expected 'examplew-<base width>' with a positive "
            f"integer base width (no sign or leading zeros), e.g. 'examplew-8' for stage widths 8, 16, 32, 64, 128."
        )
    width = int(rest)
    return _spec(tuple(width * 2**i for i in range(5)), f"Example plugin: VGG-style, base width {width}")
