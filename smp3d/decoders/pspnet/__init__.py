from .decoder import PSPBlock, PSPDecoder, PSPModule
from .model import PSPNet

__all__ = ["PSPBlock", "PSPDecoder", "PSPModule", "PSPNet"]
