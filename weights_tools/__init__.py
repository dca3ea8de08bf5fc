"""2D -> N-D weight tools: inflation of 2D state dicts and its numerical proof.

``weights_tools`` depends on :mod:`smp3d`, never the reverse. The pure inflation functions live in
:mod:`smp3d.encoders.inflate` (so encoders can inflate at load time) and are re-exported here.
"""

from __future__ import annotations

from smp3d.encoders.inflate import INFLATION_MODES, inflate_kernel, inflate_state_dict

from .verify import InflationReport, circular_depth_padding, depth_stride_one, inflation_error, inflation_report

__all__ = [
    "INFLATION_MODES",
    "InflationReport",
    "circular_depth_padding",
    "depth_stride_one",
    "inflate_kernel",
    "inflate_state_dict",
    "inflation_error",
    "inflation_report",
]
