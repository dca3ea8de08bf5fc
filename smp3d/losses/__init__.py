"""Segmentation losses for (B, C, *spatial) tensors with any number of spatial axes.

Modes, arguments, defaults and values follow segmentation_models_pytorch 0.6.0 where smp has the loss;
every loss computes in float32 with autocast off, so it is stable under bf16/fp16 autocast.
"""

from ._common import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE
from .cross_entropy import SoftBCEWithLogitsLoss, SoftCrossEntropyLoss, WeightedCrossEntropyLoss
from .deep_supervision import DeepSupervisionLoss, deep_supervision_weights, downsample_target
from .dice import DiceLoss, JaccardLoss, TverskyLoss
from .focal import FocalLoss
from .generalized_dice import GeneralizedDiceLoss, generalized_dice_weights
from .lovasz import LovaszLoss
from .mcc import MCCLoss

__all__ = [
    "BINARY_MODE",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "LovaszLoss",
    "MCCLoss",
    "SoftBCEWithLogitsLoss",
    "SoftCrossEntropyLoss",
    "TverskyLoss",
    "WeightedCrossEntropyLoss",
    "deep_supervision_weights",
    "downsample_target",
    "generalized_dice_weights",
]
