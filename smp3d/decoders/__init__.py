"""Architectures: one folder each, ``decoder.py`` (the decoder) + ``model.py`` (the assembly)."""

from .unet import Unet

__all__ = ["Unet"]
