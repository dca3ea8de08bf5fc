from .decoder import FPNLateralBlock, PSPModule, UPerNetDecoder
from .model import UPerNet

__all__ = ["FPNLateralBlock", "PSPModule", "UPerNet", "UPerNetDecoder"]
