from .decoder import SwinUNETRDecoder
from .model import SwinUNETR

__all__ = ["SwinUNETR", "SwinUNETRDecoder"]
