"""``create_model``: build any architecture by name."""

from __future__ import annotations

import difflib
from typing import Any

from .base import SegmentationModel
from .decoders import (
    DPT,
    FPN,
    PAN,
    DeepLabV3,
    DeepLabV3Plus,
    HRNet,
    Linknet,
    MAnet,
    MedNeXt,
    NNUNet,
    PSPNet,
    Segformer,
    Unet,
    UnetPlusPlus,
    UPerNet,
)

__all__ = ["ARCHITECTURES", "create_model"]

_CLASSES: tuple[type[SegmentationModel], ...] = (
    Unet,
    UnetPlusPlus,
    MAnet,
    Linknet,
    FPN,
    HRNet,
    PSPNet,
    DeepLabV3,
    DeepLabV3Plus,
    PAN,
    UPerNet,
    Segformer,
    HRNet,
    NNUNet,
    MedNeXt,
    DPT,
)

#: Lower-case name -> class: smp's names (the class names, lower-cased) and common spellings.
ARCHITECTURES: dict[str, type[SegmentationModel]] = {
    **{cls.__name__.lower(): cls for cls in _CLASSES},
    "unet++": UnetPlusPlus,
    "deeplabv3+": DeepLabV3Plus,
    "deeplabv3-plus": DeepLabV3Plus,
    "uper": UPerNet,
}


def create_model(arch: str, **kwargs: Any) -> SegmentationModel:
    """Build the architecture ``arch`` (case-insensitive, e.g. ``"Unet"``) with ``kwargs``.

    >>> model = create_model("unet", encoder_name="resnet18", in_channels=1, classes=2)
    """
    key = arch.lower() if isinstance(arch, str) else arch
    try:
        model_class = ARCHITECTURES[key]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(key), list(ARCHITECTURES), n=3, cutoff=0.5)
        raise KeyError(
            f"Unknown architecture {arch!r}. Available: {sorted(ARCHITECTURES)}"
            + (f"; did you mean {close}?" if close else ".")
        ) from None
    return model_class(**kwargs)
