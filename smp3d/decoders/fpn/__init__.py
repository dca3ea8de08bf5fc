from .decoder import ConvGroupNormReLU, FPNBlock, FPNDecoder, MergeBlock, SegmentationBlock
from .model import FPN

__all__ = ["FPN", "ConvGroupNormReLU", "FPNBlock", "FPNDecoder", "MergeBlock", "SegmentationBlock"]
