"""A flow plus its base distribution: a density model with ``log_prob`` and ``sample``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfcourse.core.distributions import StandardNormal
from nfcourse.core.flow import Flow
from nfcourse.core.validation import check_count


class FlowModel(nn.Module):
    """``x = flow.forward(z)`` with ``z ~ base``.

    ``log p(x) = log p_base(f^-1(x)) + log|det d f^-1 / dx|`` uses only the inverse direction;
    sampling uses only the forward direction. Calling the model is ``log_prob``.
    """

    def __init__(self, flow: Flow, base: nn.Module | None = None) -> None:
        super().__init__()
        if base is None:
            if flow.event_shape is None:
                raise ValueError("FlowModel: the flow has no event_shape; pass a base "
                                 "distribution, e.g. StandardNormal(2).")
            base = StandardNormal(flow.event_shape)
        self.flow = flow
        self.base = base

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.base.event_shape)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """``x: [B, *event] -> log p(x): [B]`` in nats."""
        z, logdet = self.flow.inverse(x)
        return self.base.log_prob(z) + logdet  # type: ignore[operator]

    def nll(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood over the batch (the training loss), in nats."""
        return -self.log_prob(x).mean()

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               temperature: float = 1.0) -> Tensor:
        """``n`` samples ``[n, *event]``, on the model's device and dtype.

        ``temperature`` scales the latent draw (``z ~ T * base``; Glow's trick: ``T < 1``
        trades diversity for cleaner samples); ``T = 1`` samples the model itself.
        """
        n = check_count(n, f"{type(self).__name__}.sample(n)")
        if not temperature > 0:
            raise ValueError(f"{type(self).__name__}.sample: temperature must be > 0, got "
                             f"{temperature}.")
        z = self.base.sample(n, generator=generator)  # type: ignore[operator]
        return self.flow._forward(z * temperature if temperature != 1.0 else z)[0]

    def sample_and_log_prob(self, n: int, generator: torch.Generator | None = None
                            ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density in one pass (no inverse needed)."""
        n = check_count(n, f"{type(self).__name__}.sample_and_log_prob(n)")
        z = self.base.sample(n, generator=generator)  # type: ignore[operator]
        x, logdet = self.flow._forward(z)
        return x, self.base.log_prob(z) - logdet  # type: ignore[operator]
