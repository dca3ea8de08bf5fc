"""``tu-<plain ViT>``: timm's non-hierarchical transformers (ViT, DeiT, DINOv2, EVA ...) as 2D or N-D encoders.

A plain ViT has one patch embedding and then blocks that all work on one token grid, so its features
share one reduction (the patch size). :mod:`smp3d_encoders.timm_universal` sends such models here.
:class:`TimmViTEncoder` keeps timm's whole model (``self.model``, keys equal to smp 0.6's
``TimmViTEncoder``, so smp's DPT checkpoints load strictly) and runs its own token loop, the one
timm's ``forward_intermediates`` runs, for 2D and N-D alike:

1. patch embedding: timm's ``patch_embed.proj`` becomes an N-D convolution whose kernel and stride are
   the per-axis patch size (``patch_size=(16, 16, 4)``; default: timm's patch size on every axis). A
   2D kernel inflates I3D-style (repeated along the new axis and divided by its length), so a
   depth-constant volume gives the 2D tokens at every depth;
2. absolute position embeddings: in N-D the table covers an N-D grid (timm's 2D grid, and along each
   added axis ``img_size / patch`` tokens: the cube of timm's image size), filled from the 2D table by
   copying it along the added axes. At run time the table is resized to the actual token grid: in-plane
   by timm's own resampling (bicubic, antialiased), along the added axes linearly;
3. prefix tokens (class, distillation, register tokens) are prepended as timm does. In N-D the grid has
   ``k`` times as many patch tokens per in-plane position as the 2D grid (``k``: tokens along the added
   axes); every attention adds ``log k`` to the logits of the prefix keys, so the prefix tokens keep the
   share of attention they had in 2D (exactly so for a depth-constant volume; see the proof in the tests);
4. features: the outputs of ``depth`` chosen blocks (``output_indices``; default spread uniformly over
   the blocks as smp's DPT does), without the final norm, reshaped to ``(B, C, *grid)``. Attention is
   timm's, through ``F.scaled_dot_product_attention``.

Metadata: ``single_scale = True`` (every feature at the patch reduction: pyramid decoders refuse it,
DPT and UNETR build their own pyramid), ``num_prefix_tokens`` and :meth:`TimmViTEncoder.forward_tokens`
(features plus the prefix tokens of each chosen block, for DPT's readout).

Converted families: timm's ``VisionTransformer`` (ViT, DeiT III, DINOv2, CLIP, SigLIP ...),
``VisionTransformerDistilled`` (DeiT) and ``Eva`` without rotary embeddings (EVA-01). Refused with the
reason: models whose position handling is tied to a 2D grid (BEiT's relative position bias, EVA-02's
rotary embeddings), single-scale models that are not a patch embedding followed by blocks (MLP-Mixer,
hybrid ViTs) and models that drop tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, inflate_state_dict, load_state_dict_strict
from smp3d.encoders.hub import hub_file
from smp3d.encoders.weights import read_safetensors
from smp3d.layers.factories import check_spatial_dims, interpolation_mode

from .timm_nd import ConversionError

__all__ = ["TimmViTEncoder", "load_vit_weights", "uniform_block_indices", "vit_spec"]

# Prefix token parameters, in the order timm's models prepend them.
_PREFIX_PARAMETERS = ("cls_token", "dist_token", "reg_token")


def uniform_block_indices(depth: int, blocks: int) -> tuple[int, ...]:
    """``depth`` block indices spread over ``blocks`` blocks, the last one included (smp's DPT rule):
    4 of 12 gives ``(2, 5, 8, 11)``."""
    return tuple(int(blocks / depth * k) - 1 for k in range(1, depth + 1))


def _timm_models() -> Any:
    import timm.layers
    import timm.models

    return timm


def _patch_size(value: Any, spatial_dims: int, timm_patch: tuple[int, int], owner: str) -> tuple[int, ...]:
    if value is None:
        return (*timm_patch, *(timm_patch[0],) * (spatial_dims - 2))
    items = (value,) * spatial_dims if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or len(items) != spatial_dims
        or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in items)
    ):
        raise ValueError(
            f"{owner}: patch_size must be a positive int or a tuple of {spatial_dims} positive ints (one per axis, "
            f"e.g. (16, 16, 4) for thin slices), got {value!r}."
        )
    return tuple(items)


def _patch_from_strides(strides: Any, depth: int, spatial_dims: int, owner: str) -> tuple[int, ...] | None:
    """A plain ViT reduces once: ``strides`` may only be ``depth`` items, the first the patch size, the rest 1."""
    if strides is None:
        return None
    hint = (
        f"A plain ViT has one patch embedding and then blocks at one resolution: give strides as (patch, 1, ..., 1) "
        f"with {depth} items, e.g. ((16, 16, 4),{' 1,' * (depth - 1)}), or use patch_size=(16, 16, 4)."
    )
    if isinstance(strides, (str, bytes, int)) or not isinstance(strides, Sequence) or len(strides) != depth:
        raise ValueError(f"{owner}: strides={strides!r} does not fit. {hint}")
    patch = _patch_size(strides[0], spatial_dims, (1, 1), owner)
    rest = [_patch_size(s, spatial_dims, (1, 1), owner) for s in strides[1:]]
    if any(r != (1,) * spatial_dims for r in rest):
        raise ValueError(f"{owner}: strides={strides!r} reduce after the patch embedding. {hint}")
    return patch


class TimmViTEncoder(Encoder):
    """A timm plain ViT as a single-scale 2D or N-D encoder (see the module docs).

    Args:
        timm_name: a timm model name (``vit_base_patch16_224``).
        in_channels: input channels.
        depth: number of features (blocks read), 1..number of blocks.
        spatial_dims: 2 or 3.
        strides: ``None``, or ``(patch, 1, ..., 1)`` (``depth`` items): the patch size, per axis.
        output_indices: the blocks whose outputs are the features (0-based, negative from the end);
            ``None``: :func:`uniform_block_indices`.
        patch_size: per-axis patch size (an int or a tuple of ``spatial_dims`` ints); the in-plane part is
            given to timm (which resamples pretrained kernels), the rest is the N-D kernel's extra axes.
        position_grid: tokens of the stored position table along each added axis (N-D only; an int or one per
            added axis). ``None``: timm's image size over the patch size (a cube), e.g. 14 for ViT-B/16 at 224.
            The table is resized to the input's grid at run time; a smaller one saves parameters.
        timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size`` ...).
    """

    single_scale = True
    _torch_script_refusal = "timm's transformer blocks and prefix-token handling are not written for TorchScript"

    def __init__(
        self,
        timm_name: str,
        in_channels: int = 3,
        depth: int = 4,
        spatial_dims: int = 3,
        strides: Any = None,
        output_indices: Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = None,
        position_grid: int | Sequence[int] | None = None,
        **timm_kwargs: Any,
    ):
        from .timm_universal import _create

        owner = f"tu-{timm_name}"
        spatial_dims = check_spatial_dims(spatial_dims)
        forbidden = {"features_only", "out_indices", "in_chans", "pretrained", "output_stride"} & set(timm_kwargs)
        if forbidden:
            raise TypeError(
                f"{owner}: {sorted(forbidden)} are set by the encoder (use in_channels, encoder_depth, "
                f"encoder_weights; a plain ViT cannot be dilated)."
            )
        from_strides = _patch_from_strides(strides, depth, spatial_dims, owner)
        if from_strides is not None and patch_size is not None:
            raise ValueError(f"{owner}: give the patch size once, as patch_size or as strides, not both.")
        wanted = patch_size if from_strides is None else from_strides
        if wanted is not None:
            wanted = _patch_size(wanted, spatial_dims, (1, 1), owner)
            timm_kwargs["patch_size"] = wanted[:2]
        model = _create(timm_name, meta=False, in_chans=in_channels, **timm_kwargs)
        self._check_structure(model, owner, spatial_dims)
        proj: nn.Conv2d = model.patch_embed.proj
        patch = _patch_size(wanted, spatial_dims, tuple(proj.kernel_size), owner)
        blocks = len(model.blocks)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= blocks:
            raise ValueError(f"{owner} has {blocks} blocks: encoder_depth must be in 1..{blocks}, got {depth!r}.")
        indices = self._indices(output_indices, depth, blocks, owner)
        width = int(model.embed_dim)
        super().__init__((in_channels, *(width,) * depth), (patch, *((1,) * spatial_dims,) * (depth - 1)), spatial_dims)
        self.timm_name = timm_name
        self.output_indices = indices
        self.patch_size = patch
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.grid_2d = tuple(int(g) for g in model.patch_embed.grid_size)
        self.embeds_prefix = model.pos_embed is not None and not getattr(model, "no_embed_class", False)
        # table grid along the added axes: timm's image size over the patch size (a cube of its image)
        image = int(model.patch_embed.img_size[0])
        added = spatial_dims - 2
        if position_grid is None:
            position_grid = tuple(max(1, image // p) for p in patch[2:])
        elif isinstance(position_grid, int) and not isinstance(position_grid, bool):
            position_grid = (position_grid,) * added
        if (
            not isinstance(position_grid, Sequence)
            or len(position_grid) != added
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in position_grid)
        ):
            raise ValueError(
                f"{owner}: position_grid must be a positive int or {added} positive ints (one per axis after the "
                f"first two), got {position_grid!r}."
            )
        self.grid = (*self.grid_2d, *position_grid)
        if spatial_dims != 2 or patch[:2] != tuple(proj.kernel_size):
            self._convert(model, patch)
        self.model = model

    # -- construction ---------------------------------------------------------------------------

    @staticmethod
    def _check_structure(model: nn.Module, owner: str, spatial_dims: int) -> None:
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        embed = getattr(model, "patch_embed", None)
        proj = getattr(embed, "proj", None)
        plain = isinstance(embed, _timm_models().layers.PatchEmbed) and not hasattr(embed, "backbone")
        blocks = getattr(model, "blocks", None)
        if not plain or not isinstance(proj, nn.Conv2d) or not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            raise ConversionError(
                f"{owner} ({kind}) is single-scale but not a plain ViT (a convolutional patch embedding "
                f"patch_embed.proj followed by a sequence of blocks), so it cannot serve as an encoder here. Plain "
                f"ViTs that work: tu-vit_*, tu-deit*, tu-*dinov2*, tu-eva*."
            )
        if proj.stride != proj.kernel_size or proj.padding != (0, 0):
            raise ConversionError(
                f"{owner}: the patch embedding overlaps (stride {proj.stride}, kernel {proj.kernel_size})."
            )
        relative = ("relative_position_bias_table", "rel_pos_h", "rel_pos")
        if getattr(model, "rel_pos_bias", None) is not None or any(
            getattr(m, name, None) is not None for m in model.modules() for name in relative
        ):
            raise ConversionError(
                f"{owner} ({kind}): its attention adds relative position bias tables sized to the 2D training "
                f"grid, which this encoder does not resize; not converted."
            )
        drop = getattr(model, "patch_drop", None)
        if drop is not None and float(getattr(drop, "prob", 0.0)) > 0:
            raise ConversionError(f"{owner}: patch dropout removes tokens, so dense features cannot be formed.")
        if getattr(model, "rope", None) is not None:
            raise ConversionError(
                f"{owner} ({kind}): its rotary position embeddings (EVA-02, RoPE ViTs) are built for timm's 2D "
                f"token grid; not converted."
            )
        position = getattr(model, "pos_embed", None)
        if position is not None and position.ndim != 3:
            raise ConversionError(
                f"{owner} ({kind}): its position embedding has shape {tuple(position.shape)}, not timm's token "
                f"table (1, tokens, channels); not converted."
            )
        missing = [a for a in ("pos_drop", "norm_pre", "embed_dim") if not hasattr(model, a)]
        if missing:
            raise ConversionError(f"{owner} ({kind}) lacks {missing}, which a plain ViT has; not converted.")

    @staticmethod
    def _indices(given: Sequence[int] | None, depth: int, blocks: int, owner: str) -> tuple[int, ...]:
        if given is None:
            return uniform_block_indices(depth, blocks)
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or len(given) != depth:
            raise ValueError(f"{owner}: output_indices must be {depth} block indices (one per feature), got {given!r}.")
        out = []
        for i in given:
            if isinstance(i, bool) or not isinstance(i, int) or not -blocks <= i < blocks:
                raise ValueError(
                    f"{owner} has {blocks} blocks: output_indices must be ints in [-{blocks}, {blocks}), got {given!r}."
                )
            out.append(i % blocks)
        if out != sorted(set(out)):
            raise ValueError(f"{owner}: output_indices must be increasing and distinct, got {given!r}.")
        return tuple(out)

    def _convert(self, model: nn.Module, patch: tuple[int, ...]) -> None:
        """Make the patch embedding N-D (I3D inflation of its kernel) and the position table N-D (copies)."""
        proj: nn.Conv2d = model.patch_embed.proj
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_dims - 1]
        new = conv(
            proj.in_channels,
            proj.out_channels,
            patch,
            stride=patch,
            bias=proj.bias is not None,
            device=proj.weight.device,
            dtype=proj.weight.dtype,
        )
        with torch.no_grad():
            weight = proj.weight
            if tuple(weight.shape[2:]) != patch[:2]:
                weight = F.interpolate(weight.float(), size=patch[:2], mode="bicubic", align_corners=False).to(
                    weight.dtype
                )
            for size in patch[2:]:
                weight = weight.unsqueeze(-1).expand(*weight.shape, size) / size
            new.weight.copy_(weight)
            if proj.bias is not None:
                new.bias.copy_(proj.bias)
        model.patch_embed.proj = new
        if model.pos_embed is not None and self.spatial_dims != 2:
            model.pos_embed = nn.Parameter(self._inflate_position_table(model.pos_embed.detach()))

    def _inflate_position_table(self, table: torch.Tensor) -> torch.Tensor:
        """A 2D table ``(1, prefix + gh * gw, C)`` (any 2D grid) -> the N-D table of :attr:`grid` (copies along
        the added axes)."""
        prefix = self.num_prefix_tokens if self.embeds_prefix else 0
        head, body = table[:, :prefix], table[:, prefix:]
        side = math.isqrt(body.shape[1])
        old = self.grid_2d if body.shape[1] == math.prod(self.grid_2d) else (side, side)
        if math.prod(old) != body.shape[1]:
            raise ValueError(
                f"tu-{self.timm_name}: a position table of {table.shape[1]} tokens ({prefix} prefix) is not a 2D grid."
            )
        body = _timm_models().layers.resample_abs_pos_embed(body, list(self.grid_2d), list(old), num_prefix_tokens=0)
        extra = self.grid[2:]
        width = body.shape[-1]
        body = body.reshape(1, *self.grid_2d, *(1,) * len(extra), width).expand(1, *self.grid, width)
        return torch.cat([head, body.reshape(1, -1, width)], dim=1).contiguous()

    # -- forward --------------------------------------------------------------------------------

    def _position_table(self, grid: list[int]) -> torch.Tensor:
        """The patch part of the position table resized to ``grid``: ``(1, prod(grid), C)``."""
        table = self.model.pos_embed
        prefix = self.num_prefix_tokens if self.embeds_prefix else 0
        body = table[:, prefix:]
        width = body.shape[-1]
        extra = self.grid[2:]
        # in-plane: timm's resampling with the added axes folded into the channels
        body = _timm_models().layers.resample_abs_pos_embed(
            body.reshape(1, self.grid_2d[0] * self.grid_2d[1], -1),
            grid[:2],
            list(self.grid_2d),
            num_prefix_tokens=0,
        )
        if extra and list(extra) != grid[2:]:
            plane = grid[0] * grid[1]
            body = body.reshape(1, plane, *extra, width).movedim(-1, 2).reshape(1, plane * width, *extra)
            body = F.interpolate(
                body, size=grid[2:], mode=interpolation_mode("linear", len(extra)), align_corners=False
            )
            body = body.reshape(1, plane, width, *grid[2:]).movedim(2, -1)
        return body.reshape(1, -1, width)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Patch tokens with prefix tokens and positions: ``(B, prefix + prod(grid), C)``, and the grid."""
        model = self.model
        tokens = model.patch_embed.proj(x)
        grid = list(tokens.shape[2:])
        tokens = model.patch_embed.norm(tokens.flatten(2).transpose(1, 2))
        batch = tokens.shape[0]
        prefix = [
            getattr(model, name).expand(batch, -1, -1)
            for name in _PREFIX_PARAMETERS
            if getattr(model, name, None) is not None
        ]
        if model.pos_embed is None:
            tokens = torch.cat([*prefix, tokens], dim=1)
        elif self.embeds_prefix:
            position = self._position_table(grid)
            head = model.pos_embed[:, : self.num_prefix_tokens]
            tokens = torch.cat([*prefix, tokens], dim=1) + torch.cat([head, position], dim=1)
        else:
            tokens = torch.cat([*prefix, tokens + self._position_table(grid)], dim=1)
        return model.pos_drop(tokens), grid

    def _prefix_bias(self, tokens: torch.Tensor, grid: list[int]) -> torch.Tensor | None:
        """``(1, 1, 1, N)`` additive attention bias: ``log k`` on the prefix keys (see the module docs)."""
        copies = math.prod(grid[2:])
        if self.num_prefix_tokens == 0 or copies == 1:
            return None
        patches = tokens.shape[1] - self.num_prefix_tokens
        bias = torch.cat([tokens.new_full((self.num_prefix_tokens,), math.log(copies)), tokens.new_zeros(patches)])
        return bias.view(1, 1, 1, -1)

    def forward_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features and prefix tokens.

        Args:
            x: ``(B, in_channels, *spatial)``, each axis divisible by the patch size.

        Returns:
            ``[x, f_1, ..., f_depth]`` with ``f_i`` of shape ``(B, C, *spatial / patch)``, and the prefix tokens
            ``(B, num_prefix_tokens, C)`` of each block read (empty ``(B, 0, C)`` tensors without prefix tokens).
        """
        model = self.model
        tokens, grid = self._embed(x)
        tokens = model.norm_pre(tokens)
        bias = self._prefix_bias(tokens, grid)
        features: list[torch.Tensor] = [x]
        prefixes: list[torch.Tensor] = []
        batch, prefix = tokens.shape[0], self.num_prefix_tokens
        for i, block in enumerate(model.blocks[: self.output_indices[-1] + 1]):
            tokens = block(tokens, attn_mask=bias)
            if i in self.output_indices:
                prefixes.append(tokens[:, :prefix])
                features.append(tokens[:, prefix:].transpose(1, 2).reshape(batch, -1, *grid).contiguous())
        return features, prefixes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, f_1, ..., f_depth]``: every feature ``(B, C, *spatial / patch)`` (see :meth:`forward_tokens`)."""
        return self.forward_tokens(x)[0]

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1: the patch embedding and the blocks up to the first one read; stage ``i``: the blocks after
        the one read for feature ``i - 1`` up to the one read for feature ``i``. Used by activation
        checkpointing (``model.set_checkpointing(encoder=True)`` checkpoints every block)."""
        first = 0 if stage == 1 else self.output_indices[stage - 2] + 1
        blocks = list(self.model.blocks[first : self.output_indices[stage - 1] + 1])
        return [self.model.patch_embed, *blocks] if stage == 1 else blocks

    def make_dilated(self, output_stride: int | Sequence[int]) -> None:
        """A plain ViT has no strided stages to trade for dilation: always refused."""
        raise ValueError(
            f"tu-{self.timm_name} is a plain ViT (one patch embedding, reduction {self.patch_size}): it cannot be "
            f"dilated to output_stride={output_stride!r}; choose the patch size instead (patch_size=...)."
        )

    # -- weights --------------------------------------------------------------------------------

    def source_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a timm checkpoint of the 2D model (timm's keys, or ours with ``model.``) onto this encoder.

        The position table is resampled to timm's 2D grid if needed and, in N-D, copied along the added
        axes; kernels are left 2D for :func:`smp3d.encoders.inflate_state_dict`. Every key of the encoder
        must be found, else a ValueError lists the missing ones; nothing is loaded partly.
        """
        out: dict[str, torch.Tensor] = {}
        missing = []
        own = self.state_dict()
        for key, target in own.items():
            inner = key[len("model.") :]
            value = state.get(inner, state.get(key))
            if value is None:
                missing.append(key)
                continue
            if inner == "pos_embed" and tuple(value.shape) != tuple(target.shape):
                value = self._inflate_position_table(value)
            out[key] = value
        if missing:
            shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
            raise ValueError(
                f"The checkpoint does not hold the weights of tu-{self.timm_name}; nothing was loaded. "
                f"Missing keys ({len(missing)}): {shown}"
            )
        return out


# -- weights and specs ----------------------------------------------------------------------------


def load_vit_weights(encoder: TimmViTEncoder, tag: str, name: str, spec: EncoderSpec) -> None:
    """Fetch timm's 2D weights of ``tag``, map them (position table included) and inflate them; load strictly."""
    source = spec.weights[tag]
    file = hub_file(
        source.repo_id,
        source.filename,
        source.revision,
        what=f"timm's pretrained weights {name}.{tag}",
        howto="Download them once with network access (they are cached), or pass a local folder.",
    )
    state = encoder.source_state_dict(read_safetensors(file))
    kernel = tuple(state["model.patch_embed.proj.weight"].shape[2:])
    if kernel != encoder.patch_size[:2]:
        raise ValueError(
            f"{name}.{tag}: the checkpoint's patch kernel is {kernel}, "
            f"the encoder's in-plane patch {encoder.patch_size[:2]}; build with the checkpoint's patch size."
        )
    state = inflate_state_dict(state, encoder)
    load_state_dict_strict(encoder, state, what=f"{name}.{tag} from the Hub repository {source.repo_id!r}")


def _build(timm_name: str, in_channels: int = 3, depth: int = 4, spatial_dims: int = 3, strides: Any = None, **kwargs):
    return TimmViTEncoder(timm_name, in_channels, depth, spatial_dims, strides, **kwargs)


def vit_spec(timm_name: str, weights: Mapping[str, WeightSource], description: str, blocks: int) -> EncoderSpec:
    """The spec of ``tu-<timm_name>`` for a plain ViT with ``blocks`` blocks (``encoder_depth`` up to it)."""
    licenses = {w.license for w in weights.values() if w.license}
    return EncoderSpec(
        build=functools.partial(_build, timm_name),
        weights=weights,
        family="tu",
        max_depth=blocks,
        license=licenses.pop() if len(licenses) == 1 else None,
        description=description,
        load_weights=load_vit_weights,
        extra={"timm_name": timm_name, "single_scale": True},
    )
