"""The one flow protocol of the book, and composition.

Direction convention (used everywhere in nfcourse):

* ``forward(z) -> (x, logdet)`` maps latent ``z`` to data ``x``; ``logdet = log|det dx/dz|``.
* ``inverse(x) -> (z, logdet)`` maps data to latent; ``logdet = log|det dz/dx|``.

``logdet`` always has shape ``[B]`` (one value per sample) and is always returned, so a density
is one line: ``log p(x) = log p_Z(z) + logdet_inverse``. Subclasses implement ``_forward`` and
``_inverse``; the public ``forward``/``inverse`` add input validation at the call boundary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from nfcourse.core.validation import check_tensor, module_dtype_device, validation_enabled

EventShape = tuple[int, ...]


def as_event_shape(event_shape: int | Sequence[int] | None) -> EventShape | None:
    """Normalise ``4`` or ``[4]`` to ``(4,)``; ``None`` means "any shape"."""
    if event_shape is None:
        return None
    if isinstance(event_shape, int):
        return (event_shape,)
    return tuple(int(s) for s in event_shape)


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``[B, ...] -> [B]`` (``B = 0`` included)."""
    if t.dim() == 2:
        return t.sum(dim=1)  # the common case of vectors: no reshape needed
    # an explicit size, not -1: reshape cannot infer -1 from an empty batch
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(dim=1)


class Flow(nn.Module):
    """An invertible map between latent space and data space, with its log-determinants.

    Args:
        event_shape: shape of one sample (``(D,)`` for vectors, ``(C, H, W)`` for images), used
            to validate inputs; ``None`` skips the shape check.
        data_shape: shape of one sample on the data side, for the rare flow that changes the
            shape (a reshape); defaults to ``event_shape``, the latent side's shape.
    """

    def __init__(self, event_shape: int | Sequence[int] | None = None,
                 data_shape: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.event_shape: EventShape | None = as_event_shape(event_shape)
        self.data_shape: EventShape | None = (self.event_shape if data_shape is None
                                              else as_event_shape(data_shape))

    # Public API -------------------------------------------------------------------------
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data. ``z: [B, *event]`` -> ``(x: [B, *data], logdet: [B])``."""
        return self._forward(self._validate(z, "forward", "z"))

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent. ``x: [B, *data]`` -> ``(z: [B, *event], logdet: [B])``."""
        return self._inverse(self._validate(x, "inverse", "x", self.data_shape))

    # To implement -----------------------------------------------------------------------
    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} has no inverse; see its docstring for why.")

    def _validate(self, t: Tensor, direction: str, name: str,
                  shape: EventShape | None = None) -> Tensor:
        """Check ``t`` against ``shape`` (default: ``event_shape``) and the module's dtype."""
        if not validation_enabled():
            # Off means off: finding the dtype walks every parameter, a cost per call that
            # switching validation off is meant to remove.
            return t
        dtype, device = module_dtype_device(self)
        return check_tensor(t, self.event_shape if shape is None else shape,
                            name=f"{type(self).__name__}.{direction}({name})",
                            dtype=dtype, device=device)


def _chain(flows: Iterable[nn.Module], v: Tensor, direction: str) -> tuple[Tensor, Tensor]:
    """Run ``flows`` in the given order, one direction, summing the log-dets (``[B]``)."""
    total: Tensor | None = None
    for f in flows:
        v, ld = getattr(f, direction)(v)
        # the first log-det starts the sum: no zeros tensor and one addition fewer
        total = ld if total is None else total + ld
    assert total is not None  # Compose refuses an empty list
    return v, total


class Compose(Flow):
    """Apply flows one after another in the forward direction; log-dets add.

    ``Compose(f1, f2, f3).forward(z)`` computes ``f3(f2(f1(z)))``; the inverse runs the layers
    in reverse order. Layers inside are called without re-validating their input.
    """

    def __init__(self, *flows: Flow, event_shape: int | Sequence[int] | None = None) -> None:
        if not flows:
            raise ValueError("Compose needs at least one flow.")
        for i, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise TypeError(f"Compose: argument {i} is a {type(f).__name__}, not a Flow.")
        shape = as_event_shape(event_shape)
        if shape is None:
            shape = next((f.event_shape for f in flows if f.event_shape is not None), None)
        # The data side is what the last layer with a known shape produces (the same as the
        # latent side unless a layer reshapes).
        data = next((f.data_shape for f in reversed(flows) if f.data_shape is not None), shape)
        super().__init__(shape, data)
        self.flows = nn.ModuleList(flows)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return _chain(self.flows, z, "_forward")

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _chain(reversed(self.flows), x, "_inverse")

    def trajectory(self, z: Tensor) -> list[Tensor]:
        """Points after each layer in the forward direction: ``[z, f1(z), f2(f1(z)), ...]``."""
        points = [self._validate(z, "trajectory", "z")]
        with torch.no_grad():
            for f in self.flows:
                points.append(f._forward(points[-1])[0])
        return points

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i: int) -> Flow:
        return self.flows[i]  # type: ignore[return-value]


class Inverse(Flow):
    """Swap the two directions of a flow: ``Inverse(f).forward == f.inverse``.

    The two sides swap too: ``Inverse(f)``'s latent side is ``f``'s data side, so a flow that
    changes the shape (a reshape) is validated against the right shape in each direction.
    """

    def __init__(self, flow: Flow) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"Inverse: expected a Flow, got {type(flow).__name__}.")
        super().__init__(flow.data_shape, flow.event_shape)
        self.flow = flow

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow._inverse(z)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow._forward(x)
