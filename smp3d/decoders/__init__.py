"""Architectures: one folder each, ``decoder.py`` (the decoder) + ``model.py`` (the assembly)."""

from .deeplabv3 import DeepLabV3, DeepLabV3Plus
from .dpt import DPT
from .fpn import FPN
from .hrnet import HRNet
from .linknet import Linknet
from .manet import MAnet
from .mednext import MedNeXt
from .nnunet import NNUNet
from .pan import PAN
from .pspnet import PSPNet
from .segformer import Segformer
from .unet import Unet
from .unetplusplus import UnetPlusPlus
from .upernet import UPerNet

__all__ = [
    "FPN",
    "HRNet",
    "PAN",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DPT",
    "Linknet",
    "MAnet",
    "NNUNet",
    "MedNeXt",
    "PSPNet",
    "Segformer",
    "UPerNet",
    "Unet",
    "UnetPlusPlus",
]
