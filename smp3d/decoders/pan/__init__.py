from .decoder import ConvBNAct, FPABlock, GAUBlock, HalvingMaxPool, PANDecoder
from .model import PAN

__all__ = ["PAN", "ConvBNAct", "FPABlock", "GAUBlock", "HalvingMaxPool", "PANDecoder"]
