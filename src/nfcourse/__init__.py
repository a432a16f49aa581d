"""nfcourse: normalizing flows, taught by running them.

Direction convention everywhere: ``forward(z) -> (x, logdet)`` is latent to data,
``inverse(x) -> (z, logdet)`` is data to latent, ``logdet`` has shape ``[batch]``.

Layers, each importing only those before it: :mod:`.core` (protocol, distributions,
``FlowModel``, validation, ``check_flow``) <- :mod:`.nn`, :mod:`.data`, :mod:`.metrics`,
:mod:`.ode` <- :mod:`.flows` <- :mod:`.vae` <- :mod:`.models` <- :mod:`.training` <-
:mod:`.matching`, :mod:`.jko` <- :mod:`.cli` <- :mod:`.book` (the book's own set-up, plots,
audit and benchmarks, which nothing in the library imports).
"""

from importlib.metadata import PackageNotFoundError, version

from nfcourse import data, models, training
from nfcourse.core import Compose, Flow, FlowModel, Inverse, StandardNormal, check_flow, validation
from nfcourse.flows import (AdditiveCoupling, AffineCoupling, DiagonalScaling, ElementwiseAffine,
                            Exp, Logit, Planar, Polar, Radial, Sigmoid, coupling_masks)
from nfcourse.models import nice, realnvp
from nfcourse.profiles import Profile, active_profile

try:
    __version__ = version("nfcourse")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Flow", "Compose", "Inverse", "ElementwiseAffine", "Exp", "Sigmoid", "Logit", "Polar",
           "Planar", "Radial", "StandardNormal", "FlowModel", "Profile", "active_profile",
           "check_flow", "validation", "__version__",
           # chapter 2: coupling flows, 2-D data with the exact two-moons density, training
           "AdditiveCoupling", "AffineCoupling", "DiagonalScaling", "coupling_masks", "nice",
           "realnvp", "data", "models", "training"]
