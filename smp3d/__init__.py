"""smp3d: 2D and 3D segmentation models for PyTorch, with encoders as plugins.

>>> import smp3d, torch
>>> model = smp3d.Unet(encoder_name="resnet18", in_channels=1, classes=3)  # 3D by default
>>> model(torch.randn(1, 1, 64, 64, 64)).shape
torch.Size([1, 3, 64, 64, 64])
"""

from . import inference, layers, losses, metrics
from .base import SegmentationModel
from .base.fold import fold_batchnorm
from .base.hub import from_pretrained
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
from .decoders.mednext import load_mednext_state_dict, upkern
from .encoders import (
    EncoderSpec,
    WeightSource,
    get_encoder,
    get_encoder_spec,
    get_preprocessing_fn,
    get_preprocessing_params,
    list_encoder_resolvers,
    list_encoders,
    preprocess_input,
    register_encoder,
    register_encoder_resolver,
    unregister_encoder,
    unregister_encoder_resolver,
)
from .inference import sliding_window_inference
from .metrics import SegmentationMetrics
from .models import create_model
from .nnunet import from_nnunet

__version__ = "0.1.0"

__all__ = [
    "FPN",
    "HRNet",
    "PAN",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DPT",
    "EncoderSpec",
    "Linknet",
    "MAnet",
    "NNUNet",
    "MedNeXt",
    "PSPNet",
    "Segformer",
    "UPerNet",
    "UnetPlusPlus",
    "SegmentationMetrics",
    "SegmentationModel",
    "Unet",
    "WeightSource",
    "__version__",
    "create_model",
    "fold_batchnorm",
    "from_nnunet",
    "from_pretrained",
    "get_encoder",
    "get_encoder_spec",
    "get_preprocessing_fn",
    "get_preprocessing_params",
    "preprocess_input",
    "inference",
    "layers",
    "list_encoder_resolvers",
    "list_encoders",
    "load_mednext_state_dict",
    "losses",
    "metrics",
    "register_encoder",
    "register_encoder_resolver",
    "sliding_window_inference",
    "unregister_encoder",
    "unregister_encoder_resolver",
    "upkern",
]
