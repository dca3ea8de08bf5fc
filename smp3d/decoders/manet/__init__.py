from .decoder import MAnetDecoder, MultiScaleFusionAttention, PositionAttention
from .model import MAnet

__all__ = ["MAnet", "MAnetDecoder", "MultiScaleFusionAttention", "PositionAttention"]
