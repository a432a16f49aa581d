"""nfcourse: normalizing flows, taught by running them.

Direction convention everywhere: ``forward(z) -> (x, logdet)`` is latent to data,
``inverse(x) -> (z, logdet)`` is data to latent, ``logdet`` has shape ``[batch]``.
"""

from importlib.metadata import PackageNotFoundError, version

from nfcourse import checkpoint, data, train
from nfcourse.distributions import StandardNormal
from nfcourse.flows import (AdditiveCoupling, AffineCoupling, Compose, DiagonalScaling,
                            ElementwiseAffine, Exp, Flow, Inverse, Logit, Planar, Polar, Radial,
                            Sigmoid, coupling_masks, nice, realnvp)
from nfcourse.model import FlowModel
from nfcourse.profiles import Profile, active_profile
from nfcourse.testing import check_flow
from nfcourse.validation import validation

try:
    __version__ = version("nfcourse")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Flow", "Compose", "Inverse", "ElementwiseAffine", "Exp", "Sigmoid", "Logit", "Polar",
           "Planar", "Radial", "StandardNormal", "FlowModel", "Profile", "active_profile",
           "check_flow", "validation", "__version__",
           # chapter 2: coupling flows, 2-D data with the exact two-moons density, training
           "AdditiveCoupling", "AffineCoupling", "DiagonalScaling", "coupling_masks", "nice",
           "realnvp", "checkpoint", "data", "train"]
