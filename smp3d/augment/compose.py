""":class:`Augment`: a spatial transform and intensity transforms applied to a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._random import device_generator
from .intensity import IntensityTransform
from .spatial import SpatialTransform


class Augment:
    """Augment a training batch ``(image, label)`` on the device where it lives.

    The spatial transform runs first (one resampling per sample, the label moved with the image),
    then the intensity transforms in order (the label is left as it is). Every random parameter is
    drawn on the host from ``generator`` for the whole batch at once; noise is drawn on the
    image's device from a generator seeded by it, so the same seed gives the same batch.

    Args:
        spatial: the :class:`SpatialTransform`, or None.
        intensity: intensity transforms, applied in this order.
        patch: spatial size of the output; the input may be larger (read with
            :meth:`input_shape` so that rotations find image data to their corners) and is then
            cropped around its centre. Default: the input's size.
        seed: seed of a private generator. Without ``seed`` or ``generator`` the draws come from
            torch's global generator, so ``torch.manual_seed`` governs them.
        generator: a CPU ``torch.Generator`` to draw from.
    """

    def __init__(
        self,
        spatial: SpatialTransform | None = None,
        intensity: Sequence[IntensityTransform] = (),
        *,
        patch: Sequence[int] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if generator is not None and seed is not None:
            raise ValueError("give seed or generator, not both")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU generator (parameters are drawn on the host), got {generator.device}"
            )
        self.spatial = spatial
        self.intensity = list(intensity)
        for transform in self.intensity:
            if not isinstance(transform, IntensityTransform):
                raise TypeError(
                    f"intensity transforms must be IntensityTransform instances, got {type(transform).__name__}"
                )
        self.patch = None if patch is None else tuple(int(p) for p in patch)
        if seed is not None:
            generator = torch.Generator()
            generator.manual_seed(seed)
        self.generator = generator if generator is not None else torch.default_generator

    def manual_seed(self, seed: int) -> Augment:
        """Reseed (a private generator is made if the global one was in use); return self."""
        if self.generator is torch.default_generator:
            self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        return self

    @property
    def is_identity(self) -> bool:
        """True when nothing can change a batch (no transforms, or every probability 0)."""
        spatial = self.spatial is not None and (
            self.spatial.resamples or (self.spatial.p_mirror > 0 and bool(self.spatial.mirror_axes))
        )
        return not spatial and all(t.p == 0 for t in self.intensity)

    def input_shape(self, patch: Sequence[int] | None = None) -> tuple[int, ...]:
        """The window to read from a volume for an output ``patch`` (default: ``self.patch``)."""
        patch = self.patch if patch is None else tuple(int(p) for p in patch)
        if patch is None:
            raise ValueError("input_shape needs a patch (none was given to Augment)")
        return patch if self.spatial is None else self.spatial.input_shape(patch)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            image: (B, C, *spatial) floating point.
            label: (B, *spatial) class indices, (B, K, *spatial) channels, or None.

        Returns:
            ``(image, label)`` with spatial size ``patch`` (or the input's); new tensors, the
            inputs are left unchanged.
        """
        _check_batch(image, label)
        shape = tuple(image.shape[2:]) if self.patch is None else self.patch
        if len(shape) != image.dim() - 2 or any(s > n for s, n in zip(shape, image.shape[2:], strict=True)):
            raise ValueError(
                f"Augment's patch {shape} does not fit the batch's spatial size {tuple(image.shape[2:])} "
                "(same number of axes, each at most the input's)"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        if self.spatial is not None:
            if self.spatial.spatial_dims != image.dim() - 2:
                raise ValueError(
                    f"the spatial transform is {self.spatial.spatial_dims}D but the image is "
                    f"(B, C, *spatial) with {image.dim() - 2} spatial axes: {tuple(image.shape)}"
                )
            image, label = self.spatial(image, label, shape, self.generator)
        else:
            image, label = _centre_crop(image, label, shape)
            image = image.clone() if self.intensity else image
        if self.intensity:
            noise = device_generator(image.device, seed)
            for transform in self.intensity:
                image = transform(image, self.generator, noise)
        return image, label

    def __repr__(self) -> str:
        parts = [repr(self.spatial)] if self.spatial is not None else []
        parts += [repr(t) for t in self.intensity]
        return f"Augment(patch={self.patch}, transforms=[{', '.join(parts)}])"


def _check_batch(image: torch.Tensor, label: torch.Tensor | None) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() not in (4, 5) or not image.is_floating_point():
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a floating-point (B, C, *spatial) tensor with 2 or 3 spatial axes, got {got}")
    if label is None:
        return
    spatial = tuple(image.shape[2:])
    ok = label.shape[0] == image.shape[0] and (
        (label.dim() == image.dim() - 1 and tuple(label.shape[1:]) == spatial)
        or (label.dim() == image.dim() and tuple(label.shape[2:]) == spatial)
    )
    if not ok:
        raise ValueError(
            f"label {tuple(label.shape)} does not match image {tuple(image.shape)}: expected "
            f"({image.shape[0]}, *{spatial}) class indices or ({image.shape[0]}, K, *{spatial}) channels"
        )
    if label.device != image.device:
        raise ValueError(f"label is on {label.device} but image is on {image.device}")


def _centre_crop(
    image: torch.Tensor, label: torch.Tensor | None, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if tuple(image.shape[2:]) == shape:
        return image, label
    window = tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(image.shape[2:], shape, strict=True))
    image = image[(slice(None), slice(None), *window)].contiguous()
    if label is not None:
        lead = 2 if label.dim() == image.dim() else 1
        label = label[(slice(None),) * lead + window].contiguous()
    return image, label
