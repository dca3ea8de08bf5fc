from .decoder import MedNeXtDecoder
from .model import MedNeXt
from .weights import load_mednext_state_dict, mednext_state_dict, upkern, upkern_state_dict

__all__ = [
    "MedNeXt",
    "MedNeXtDecoder",
    "load_mednext_state_dict",
    "mednext_state_dict",
    "upkern",
    "upkern_state_dict",
]
