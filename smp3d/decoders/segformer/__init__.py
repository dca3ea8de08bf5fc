from .decoder import MLP, SegformerDecoder
from .model import Segformer

__all__ = ["MLP", "Segformer", "SegformerDecoder"]
