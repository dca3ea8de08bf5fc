from .decoder import UNETRDecoder
from .model import UNETR

__all__ = ["UNETR", "UNETRDecoder"]
