"""Flows: the protocol and composition (:mod:`.base`), chapter 1's simple flows (:mod:`.simple`)."""

from nfcourse.flows.base import Compose, Flow, Inverse, sum_except_batch
from nfcourse.flows.simple import (ElementwiseAffine, Exp, Logit, Planar, Polar, Radial,
                                   Sigmoid)

__all__ = ["Flow", "Compose", "Inverse", "sum_except_batch", "ElementwiseAffine", "Exp",
           "Sigmoid", "Logit", "Polar", "Planar", "Radial"]
