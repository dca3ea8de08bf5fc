from .decoder import EmptyNode, UnetPlusPlusDecoder
from .model import UnetPlusPlus

__all__ = ["EmptyNode", "UnetPlusPlus", "UnetPlusPlusDecoder"]
