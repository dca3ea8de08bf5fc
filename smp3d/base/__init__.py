"""Model scaffolding shared by every architecture."""

from .assembly import (
    build_encoder,
    check_channels,
    check_decoder_channels,
    check_encoder_depth,
    final_upsampling,
    pop_deprecated_norm,
)
from .checks import check_classes, check_input, padded_size
from .heads import ClassificationHead, SegmentationHead, build_classification_head
from .initialization import initialize_decoder, initialize_head
from .model import SegmentationModel

__all__ = [
    "ClassificationHead",
    "SegmentationHead",
    "SegmentationModel",
    "build_classification_head",
    "build_encoder",
    "check_channels",
    "check_decoder_channels",
    "check_encoder_depth",
    "final_upsampling",
    "pop_deprecated_norm",
    "check_classes",
    "check_input",
    "initialize_decoder",
    "initialize_head",
    "padded_size",
]
