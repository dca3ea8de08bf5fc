from .decoder import HRNetDecoder
from .model import HRNet

__all__ = ["HRNet", "HRNetDecoder"]
