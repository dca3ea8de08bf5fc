from .decoder import (
    ASPP,
    ASPPConv,
    ASPPPooling,
    ASPPSeparableConv,
    DeepLabV3Decoder,
    DeepLabV3PlusDecoder,
    SeparableConv,
)
from .model import DeepLabV3, DeepLabV3Plus

__all__ = [
    "ASPP",
    "ASPPConv",
    "ASPPPooling",
    "ASPPSeparableConv",
    "DeepLabV3",
    "DeepLabV3Decoder",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "SeparableConv",
]
