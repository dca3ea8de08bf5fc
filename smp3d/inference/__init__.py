"""Sliding-window inference for volumes larger than a model's input: N-D, batched, blended in place."""

from .predict import keep_largest_component, predict_probabilities
from .sliding_window import sliding_window_inference
from .windows import importance_map, window_starts

__all__ = [
    "importance_map",
    "keep_largest_component",
    "predict_probabilities",
    "sliding_window_inference",
    "window_starts",
]
