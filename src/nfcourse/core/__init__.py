"""The core every other module builds on: the flow protocol, base distributions, the density
model, input validation and ``check_flow``.

Direction convention everywhere: ``forward(z) -> (x, logdet)`` is latent to data,
``inverse(x) -> (z, logdet)`` is data to latent, ``logdet`` has shape ``[batch]``.
"""

from nfcourse.core.distributions import StandardNormal
from nfcourse.core.flow import Compose, Flow, Inverse, as_event_shape, sum_except_batch
from nfcourse.core.model import FlowModel
from nfcourse.core.testing import check_flow
from nfcourse.core.validation import validation

__all__ = ["Flow", "Compose", "Inverse", "as_event_shape", "sum_except_batch", "StandardNormal",
           "FlowModel", "check_flow", "validation"]
