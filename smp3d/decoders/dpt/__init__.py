from .decoder import DPTDecoder, DPTSegmentationHead, dpt_level_reductions
from .model import DPT

__all__ = ["DPT", "DPTDecoder", "DPTSegmentationHead", "dpt_level_reductions"]
