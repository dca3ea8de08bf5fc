from .decoder import LinknetDecoder, LinknetDecoderBlock, TransposedUpsample
from .model import Linknet

__all__ = ["Linknet", "LinknetDecoder", "LinknetDecoderBlock", "TransposedUpsample"]
