from .decoder import UnetCenterBlock, UnetDecoder, UnetDecoderBlock
from .model import Unet

__all__ = ["Unet", "UnetCenterBlock", "UnetDecoder", "UnetDecoderBlock"]
