from .decoder import NNUNetDecoder, NNUNetDecoderBlock
from .model import NNUNet

__all__ = ["NNUNet", "NNUNetDecoder", "NNUNetDecoderBlock"]
