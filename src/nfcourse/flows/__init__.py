"""The flows, one module per family; each follows :class:`nfcourse.core.Flow`.

* :mod:`.simple` -- chapter 1: elementwise affine, exp, sigmoid/logit, polar, planar, radial.
* :mod:`.coupling` -- chapter 2: the one affine coupling (NICE, RealNVP, Glow) and its
  partitions.
* :mod:`.glow` -- chapter 3: ActNorm, invertible 1x1 convolutions, squeeze and split.
* :mod:`.continuous` -- chapter 4: the continuous flow (an ODE) and FFJORD's density model.
* :mod:`.images` -- chapter 5: the logit transform, multi-scale levels, variational
  dequantisation.
* :mod:`.spline` -- chapter 10: the rational-quadratic spline and the spline coupling.
* :mod:`.autoregressive` -- chapter 10: MADE and the masked autoregressive flow (MAF and
  IAF, affine or spline).

The models built from them are in :mod:`nfcourse.models`.
"""

from nfcourse.flows.autoregressive import MADE, MaskedAutoregressive, MaskedLinear
from nfcourse.flows.continuous import CNF, AugmentedDynamics, ContinuousFlow, LinearField
from nfcourse.flows.coupling import (AdditiveCoupling, AffineCoupling, ChannelSplit,
                                     Checkerboard, Conditioned, ContextOnly, DiagonalScaling,
                                     IndexSplit, Partition, coupling_masks, never_transformed)
from nfcourse.flows.glow import (ActNorm, GlowLevel, GlowStep,
                                 InvertibleConv1x1, InvertibleLinear, Split, initialize_actnorms,
                                 squeeze2d, unsqueeze2d)
from nfcourse.flows.simple import (ElementwiseAffine, Exp, Logit, Planar, Polar, Radial,
                                   Sigmoid)
from nfcourse.flows.spline import RQSpline, SplineCoupling, rational_quadratic_spline

__all__ = ["ElementwiseAffine", "Exp", "Sigmoid", "Logit", "Polar", "Planar", "Radial",
           "AdditiveCoupling", "AffineCoupling", "DiagonalScaling", "coupling_masks",
           "never_transformed", "Partition", "IndexSplit", "Checkerboard", "ChannelSplit",
           "ContextOnly", "Conditioned", "ActNorm", "GlowLevel", "GlowStep",
           "InvertibleConv1x1", "InvertibleLinear", "Split", "initialize_actnorms", "squeeze2d",
           "unsqueeze2d", "CNF", "AugmentedDynamics", "ContinuousFlow", "LinearField",
           "rational_quadratic_spline", "RQSpline", "SplineCoupling", "MaskedLinear", "MADE",
           "MaskedAutoregressive"]
