"""Flows, one module per chapter.

* :mod:`.base` -- the protocol and composition; :mod:`.simple` -- chapter 1's simple flows.
* :mod:`.coupling` -- chapter 2's coupling layers (NICE, RealNVP) and their masks.
* :mod:`.glow` -- chapter 3's Glow: ActNorm, invertible 1x1 convolutions, multi-scale.
"""

from nfcourse.flows.base import Compose, Flow, Inverse, sum_except_batch
from nfcourse.flows.coupling import (AdditiveCoupling, AffineCoupling, DiagonalScaling,
                                     coupling_masks, never_transformed, nice, realnvp)
from nfcourse.flows.glow import (ActNorm, ConvAffineCoupling, GlowLevel, GlowStep,
                                 InvertibleConv1x1, InvertibleLinear, Split, glow, glow_2d,
                                 initialize_actnorms, squeeze2d, unsqueeze2d)
from nfcourse.flows.simple import (ElementwiseAffine, Exp, Logit, Planar, Polar, Radial,
                                   Sigmoid)

__all__ = ["Flow", "Compose", "Inverse", "sum_except_batch", "ElementwiseAffine", "Exp",
           "Sigmoid", "Logit", "Polar", "Planar", "Radial", "AdditiveCoupling",
           "AffineCoupling", "DiagonalScaling", "coupling_masks", "never_transformed", "nice",
           "realnvp", "ActNorm", "ConvAffineCoupling", "GlowLevel", "GlowStep",
           "InvertibleConv1x1", "InvertibleLinear", "Split", "glow", "glow_2d",
           "initialize_actnorms", "squeeze2d", "unsqueeze2d"]
