"""DeepLabV3 and DeepLabV3+: a dilated encoder decoded by atrous spatial pyramid pooling."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling
from ...encoders.dilation import resolve_output_stride
from ...encoders.protocol import StridesArg
from ...layers import check_spatial_dims
from .decoder import DeepLabV3Decoder, DeepLabV3PlusDecoder, Rate

__all__ = ["DeepLabV3", "DeepLabV3Plus"]

# Checkpoints of smp's DeepLabV3 from before its decoder had named children stored it as a
# Sequential (ASPP, conv, BN, ReLU): same tensors under the indices 0, 1, 2.
_LEGACY_DECODER_KEYS = {"decoder.0.": "decoder.aspp.", "decoder.1.": "decoder.conv.", "decoder.2.": "decoder.bn."}


def _rename_legacy_decoder_keys(
    module: nn.Module, state_dict: MutableMapping[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Load-state-dict pre-hook: rename old-layout DeepLabV3 decoder keys in place (torch passes a copy)."""
    for key in list(state_dict):
        for old, new in _LEGACY_DECODER_KEYS.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
                break


def _check_output_stride(value: Any, spatial_dims: Any, arch: str) -> None:
    # Checked before building the encoder, so a typo fails fast.
    resolve_output_stride(value, check_spatial_dims(spatial_dims), f"{arch}: encoder_output_stride")


class DeepLabV3(SegmentationModel):
    """DeepLabV3 (Chen et al., 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation",
    https://arxiv.org/abs/1706.05587) with any registered encoder, in 2D or 3D.

    The encoder's deepest strides are traded for dilation until its output stride is
    ``encoder_output_stride``; atrous spatial pyramid pooling (ASPP) decodes the deepest feature
    and the segmentation head upsamples the result back to the input size.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those
    of segmentation_models_pytorch 0.6's ``DeepLabV3``, except ``encoder_weights`` defaulting to
    ``None``. Checkpoints of smp's older DeepLabV3 layout (``decoder.0.`` / ``decoder.1.`` /
    ``decoder.2.``) load too: their keys are renamed on loading.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages (the encoder's range, usually 1..5); the decoder
            uses only the deepest feature.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        encoder_output_stride: target reduction of the deepest feature, an int or a per-axis tuple.
            smp allows 8 or 16 (same outputs here in 2D); any value the encoder can reach by removing
            whole stage strides is accepted (e.g. ``(8, 8, 4)``). Axes already at or below it are
            left alone (a shallow encoder or thick slices need no dilation).
        decoder_channels: channels of every ASPP branch and of the decoder output.
        decoder_atrous_rates: three dilation rates of the ASPP branches; each an int (all axes) or a
            per-axis tuple, e.g. ``((12, 12, 2), (24, 24, 4), (36, 36, 6))`` for thick slices.
        decoder_aspp_separable: depthwise-separable convolutions in the dilated ASPP branches.
        decoder_aspp_dropout: dropout probability after the ASPP projection.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: scale factor of the segmentation head. ``None`` (default) upsamples back to the
            input size: the per-axis output stride of the (dilated) encoder, as in smp. An int or a
            per-axis tuple is used as given.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        kwargs: passed to the encoder's builder.

    Refused at construction (ValueError): an ``encoder_output_stride`` the encoder cannot reach
    (between two of its stage reductions, or below its own output stride with an encoder that
    cannot be dilated), malformed atrous rates, ``decoder_channels`` or dropout. Input sizes must
    be divisible by the (dilated) output stride, because the head upsamples by a fixed factor.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        encoder_output_stride: int | tuple[int, ...] = 8,
        decoder_channels: int = 256,
        decoder_atrous_rates: Iterable[Rate] = (12, 24, 36),
        decoder_aspp_separable: bool = False,
        decoder_aspp_dropout: float = 0.5,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: int | tuple[int, ...] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_classes(classes)
        decoder_channels = check_channels(decoder_channels, "decoder_channels", "DeepLabV3")
        _check_output_stride(encoder_output_stride, spatial_dims, "DeepLabV3")
        self.encoder = build_encoder(
            "DeepLabV3",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            output_stride=encoder_output_stride,
            **kwargs,
        )
        self.decoder = DeepLabV3Decoder(
            in_channels=self.encoder.out_channels[-1],
            out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates,
            aspp_separable=decoder_aspp_separable,
            aspp_dropout=decoder_aspp_dropout,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[-1], "DeepLabV3"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"deeplabv3-{encoder_name}"
        self._register_load_state_dict_pre_hook(_rename_legacy_decoder_keys, with_module=True)  # public from torch 2.5
        self.initialize()


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ (Chen et al., 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic
    Image Segmentation", https://arxiv.org/abs/1802.02611) with any registered encoder, in 2D or 3D.

    DeepLabV3's ASPP on the dilated deepest feature, upsampled to the size of a finer encoder
    feature and fused with it by separable convolutions, so that boundaries are sharper. The
    finer feature is chosen from the encoder's metadata: the shallowest intermediate feature whose
    reduction reaches 4 along its most reduced axis (feature 2 with the default strides, as in smp;
    see :func:`~smp3d.decoders.deeplabv3.decoder.highres_level`).

    In 2D (``spatial_dims=2``) the arguments, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``DeepLabV3Plus``; defaults too, except ``encoder_weights``
    (``None``) and ``upsampling`` (``None``, see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 3..5.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        encoder_output_stride: target reduction of the deepest feature, an int or a per-axis tuple.
            smp allows 8 or 16 (same outputs here in 2D); any value the encoder can reach by removing
            whole stage strides is accepted. Axes already at or below it are left alone.
        decoder_channels: channels of every ASPP branch and of the decoder output.
        decoder_atrous_rates: three dilation rates of the ASPP branches; each an int (all axes) or a
            per-axis tuple.
        decoder_aspp_separable: depthwise-separable convolutions in the dilated ASPP branches.
        decoder_aspp_dropout: dropout probability after the ASPP projection.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: scale factor of the segmentation head. ``None`` (default) upsamples back to the
            input size: the per-axis reduction of the high-resolution feature — in 2D with the default
            strides this equals smp's default of 4. An int or a per-axis tuple is used as given.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        kwargs: passed to the encoder's builder.

    Refused at construction (ValueError): ``encoder_depth`` below 3 (as smp: the decoder needs a
    feature finer than the deepest one, and with the default strides the one at reduction 4 comes
    out of stage 2), an ``encoder_output_stride`` the encoder cannot reach, malformed atrous rates,
    ``decoder_channels`` or dropout. Input sizes must be divisible by the (dilated) output stride.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        encoder_output_stride: int | tuple[int, ...] = 16,
        decoder_channels: int = 256,
        decoder_atrous_rates: Iterable[Rate] = (12, 24, 36),
        decoder_aspp_separable: bool = True,
        decoder_aspp_dropout: float = 0.5,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: int | tuple[int, ...] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_encoder_depth(
            encoder_depth,
            (3, 4, 5),
            "DeepLabV3Plus",
            "Its decoder fuses the deepest feature with a finer one (reduction 4, the output of stage 2 "
            "with the default strides), so it needs at least 3 encoder stages.",
        )
        check_classes(classes)
        decoder_channels = check_channels(decoder_channels, "decoder_channels", "DeepLabV3Plus")
        _check_output_stride(encoder_output_stride, spatial_dims, "DeepLabV3Plus")
        self.encoder = build_encoder(
            "DeepLabV3Plus",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            output_stride=encoder_output_stride,
            **kwargs,
        )
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates,
            aspp_separable=decoder_aspp_separable,
            aspp_dropout=decoder_aspp_dropout,
            spatial_dims=spatial_dims,
        )
        reduction = self.encoder.reductions[self.decoder.highres_level]
        self.segmentation_head = SegmentationHead(
            decoder_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(upsampling, reduction, "DeepLabV3Plus"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"deeplabv3plus-{encoder_name}"
        self.initialize()
