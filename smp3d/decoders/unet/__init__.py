from .decoder import UnetDecoder, UnetDecoderBlock
from .model import Unet

__all__ = ["Unet", "UnetDecoder", "UnetDecoderBlock"]
