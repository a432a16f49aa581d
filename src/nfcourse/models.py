"""Every model the book trains, and the one registry that rebuilds them from a checkpoint.

A builder takes keyword arguments only and returns a ready model; :data:`BUILTIN_MODELS` maps
the name a checkpoint stores (``model_spec["name"]``) to it, so a fresh process that imports
this module can rebuild any of them. :func:`register_model` adds a user's own builder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nfcourse.core.flow import Compose, Flow, Inverse, as_event_shape
from nfcourse.core.model import FlowModel
from nfcourse.core.validation import check_count
from nfcourse.data.images import MNIST_SHAPE
from nfcourse.flows.autoregressive import MaskedAutoregressive
from nfcourse.flows.continuous import CNF
from nfcourse.flows.coupling import (AdditiveCoupling, AffineCoupling, DiagonalScaling,
                                     IndexSplit, coupling_masks)
from nfcourse.flows.glow import GlowLevel, GlowStep, _event
from nfcourse.flows.images import MultiScaleLevel, Reshape, checkerboard_vector
from nfcourse.flows.simple import ElementwiseAffine, Logit, Planar, Radial
from nfcourse.flows.spline import SplineCoupling
from nfcourse.nn import VelocityMLP
from nfcourse.ode.solvers import SolverSpec
from nfcourse.vae import VAE, elbo_objective


def realnvp(features: int = 2, layers: int = 8, hidden: int = 64, *, depth: int = 2,
            masks: str = "halves", scale_bound: float = 3.0) -> FlowModel:
    """A RealNVP density model: ``layers`` affine couplings with alternating masks, ``N(0, I)``.

    ``masks="lecture"`` builds the lecture's defective split instead (see
    :func:`coupling_masks`). Starts as the identity map, so initially ``p = N(0, I)``.
    """
    flows = [AffineCoupling(IndexSplit(m), hidden, depth, scale_bound)
             for m in coupling_masks(features, layers, masks)]
    return FlowModel(Compose(*flows))


def nice(features: int = 2, layers: int = 8, hidden: int = 64, *, depth: int = 2,
         masks: str = "halves") -> FlowModel:
    """A NICE density model: ``layers`` additive couplings and a diagonal scaling layer.

    The scaling sits next to the base distribution (in the data -> latent direction it is
    applied last, as in the NICE paper), so it rescales the Gaussian before the couplings
    bend it.
    """
    flows: list[Flow] = [DiagonalScaling(features)]
    flows += [AdditiveCoupling(IndexSplit(m), hidden, depth)
              for m in coupling_masks(features, layers, masks)]
    return FlowModel(Compose(*flows))


def _stack_layers(layers: object, who: str) -> int:
    k = check_count(layers, f"{who}(layers)", "layers")
    if k < 1:
        raise ValueError(f"{who}: need at least one layer, got {k}.")
    return k


def planar_model(features: int = 2, layers: int = 8, *, seed: int = 0,
                 init_scale: float = 1.0) -> FlowModel:
    """Chapter 11's variational family: ``layers`` planar layers (Rezende & Mohamed 2015),
    parameters drawn from ``seed`` (``init_scale`` as in :class:`~nfcourse.flows.simple.Planar`)."""
    g = torch.Generator().manual_seed(seed)
    k = _stack_layers(layers, "planar_model")
    return FlowModel(Compose(*[Planar(features, generator=g, init_scale=init_scale)
                               for _ in range(k)]))


def radial_model(features: int = 2, layers: int = 8, *, seed: int = 0,
                 init_scale: float = 1.0) -> FlowModel:
    """``layers`` radial layers, centres and parameters drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    k = _stack_layers(layers, "radial_model")
    return FlowModel(Compose(*[Radial(features, generator=g, init_scale=init_scale)
                               for _ in range(k)]))


def mean_field(features: int) -> FlowModel:
    """The mean-field Gaussian ``N(mu, diag(sigma^2))`` as a one-layer flow
    ``x = mu + sigma * z`` (starts at ``N(0, I)``)."""
    return FlowModel(ElementwiseAffine(features))


def _autoregressive(features: int, layers: int, hidden: int, depth: int, convention: str,
                    transformer: str, bins: int, bound: float, scale_bound: float) -> FlowModel:
    """``layers`` masked autoregressive layers whose orders alternate forward and reversed."""
    if layers < 1:
        raise ValueError(f"number of autoregressive layers must be >= 1, got {layers}.")
    forward = list(range(features))
    flows = [MaskedAutoregressive(features, hidden, depth, transformer=transformer,
                                  convention=convention, bins=bins, bound=bound,
                                  scale_bound=scale_bound,
                                  order=forward if k % 2 == 0 else forward[::-1])
             for k in range(layers)]
    return FlowModel(Compose(*flows))


def maf(features: int = 2, layers: int = 5, hidden: int = 64, *, depth: int = 2,
        transformer: str = "affine", bins: int = 8, bound: float = 3.0,
        scale_bound: float = 3.0) -> FlowModel:
    """A masked autoregressive flow (MAF) density model with a ``N(0, I)`` base.

    ``layers`` MADE-conditioned layers, each reversing the previous one's order; ``log_prob``
    is one MADE pass per layer, ``sample`` ``features`` passes per layer.
    ``transformer="spline"`` makes it the autoregressive neural spline flow (``bins`` bins on
    ``[-bound, bound]``). Starts as the identity map.
    """
    return _autoregressive(features, layers, hidden, depth, "maf", transformer, bins, bound,
                           scale_bound)


def iaf(features: int = 2, layers: int = 5, hidden: int = 64, *, depth: int = 2,
        transformer: str = "affine", bins: int = 8, bound: float = 3.0,
        scale_bound: float = 3.0) -> FlowModel:
    """An inverse autoregressive flow (IAF): :func:`maf`'s layers with the network reading the
    latent side, so ``sample`` is one MADE pass per layer and ``log_prob`` of given data
    ``features`` passes per layer. Starts as the identity map."""
    return _autoregressive(features, layers, hidden, depth, "iaf", transformer, bins, bound,
                           scale_bound)


NSF_KINDS = ("coupling", "autoregressive")


def nsf(features: int = 2, layers: int = 4, hidden: int = 64, *, depth: int = 2,
        kind: str = "coupling", bins: int = 8, bound: float = 3.0,
        masks: str = "halves") -> FlowModel:
    """A neural spline flow: rational-quadratic splines of ``bins`` bins on
    ``[-bound, bound]`` (identity outside) with a ``N(0, I)`` base.

    ``kind="coupling"``: ``layers`` spline couplings with alternating masks (``masks``, see
    :func:`coupling_masks`), RealNVP's layout. ``kind="autoregressive"``: :func:`maf` with the
    spline transformer. Starts as the identity map.
    """
    if kind not in NSF_KINDS:
        raise ValueError(f"nsf: kind must be 'coupling' or 'autoregressive', got {kind!r}.")
    if kind == "autoregressive":
        return maf(features, layers, hidden, depth=depth, transformer="spline", bins=bins,
                   bound=bound)
    flows = [SplineCoupling(IndexSplit(m), bins, bound, hidden, depth)
             for m in coupling_masks(features, layers, masks)]
    return FlowModel(Compose(*flows))


def glow(event_shape: Sequence[int] = (1, 8, 8), levels: int = 2, steps: int = 4,
         hidden: int = 64, *, lu: bool = True, seed: int | None = 0,
         alpha: float | None = None) -> FlowModel:
    """A multi-scale Glow density model for images ``[B, C, H, W]`` with a ``N(0, I)`` base.

    ``levels`` scales of ``steps`` Glow steps each; ``H`` and ``W`` must be divisible by
    ``2**levels``. ``seed`` fixes the random rotations the 1x1 convolutions start from (the
    coupling nets use the global RNG). ActNorms initialise on the first training batch, or
    call :func:`initialize_actnorms` with a larger one. With ``alpha`` the model ends with the
    logit transform (margin ``alpha``): a density on ``y`` in ``[0, 1)^D``, as the image
    trainer (:func:`~nfcourse.training.images.train_images`) expects; without it a density on
    the real line.
    """
    shape = _event(event_shape)
    if len(shape) != 3:
        raise ValueError(f"glow() is for images (C, H, W); got {shape}. Use glow_2d for vectors.")
    if shape[1] % 2**levels or shape[2] % 2**levels:
        raise ValueError(f"glow(): {levels} levels halve the image {levels} times, so H and W "
                         f"must be divisible by {2**levels}; got {shape[1]}x{shape[2]}.")
    g = None if seed is None else torch.Generator().manual_seed(seed)
    level = GlowLevel(shape, steps, hidden, levels, lu, g)
    if alpha is None:
        return FlowModel(level)
    return FlowModel(Compose(level, Inverse(Logit(shape, alpha)), event_shape=shape))


def glow_2d(features: int = 2, steps: int = 8, hidden: int = 64, *, depth: int = 2,
            lu: bool = True, scale_bound: float = 3.0, seed: int | None = 0) -> FlowModel:
    """A Glow-style density model for vectors: ``steps`` x (ActNorm, LU linear, coupling)."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    flows = [GlowStep((features,), hidden, lu, depth, scale_bound, g) for _ in range(steps)]
    return FlowModel(Compose(*flows))


def tiny_realnvp(shape: Sequence[int] = MNIST_SHAPE, layers: int = 12, hidden: int = 256, *,
                 depth: int = 2, alpha: float = 0.05, scale_bound: float = 3.0) -> FlowModel:
    """The lecture's "tiny RealNVP": dense affine couplings on the flattened image.

    A density on ``y`` in ``[0, 1)^D`` (``D = 784`` for MNIST): data -> latent it applies the
    logit transform, flattens, and runs ``layers`` couplings (MLP conditioner with ``depth``
    hidden layers of ``hidden`` units) whose kept pixels alternate between the two colours
    of a checkerboard; every pixel is transformed by every other layer.
    """
    shape_t = as_event_shape(shape)
    assert shape_t is not None and len(shape_t) == 3
    d = math.prod(shape_t)
    couplings: list[Flow] = []
    for k in range(layers):
        mask = checkerboard_vector(shape_t[1:], k % 2).repeat(shape_t[0])
        couplings.append(AffineCoupling(IndexSplit(mask), hidden, depth, scale_bound))
    flow = Compose(Reshape(shape_t, (d,)), *couplings, Reshape((d,), shape_t),
                   Inverse(Logit(shape_t, alpha)), event_shape=shape_t)
    return FlowModel(flow)


def multiscale_realnvp(shape: Sequence[int] = MNIST_SHAPE, scales: int = 3,
                       hidden: int | Sequence[int] = 64, *,
                       checker: int | Sequence[int] = 3, channel: int | Sequence[int] = 3,
                       alpha: float = 0.05, blocks: int = 0, actnorm: bool = True) -> FlowModel:
    """A RealNVP-style multi-scale convolutional flow (density on ``y`` in ``[0, 1)^D``).

    For MNIST with ``scales=3`` and single counts: 1x28x28 -> (checkerboard x3, squeeze,
    channel x3, split) -> 2x14x14 -> (same) -> 4x7x7 -> checkerboard x4. Per-scale counts and
    per-resolution widths give other layouts (see :class:`MultiScaleLevel`);
    :data:`MNIST_RECIPE` is the book's recommended one. ``blocks > 0`` gives every coupling a
    gated residual conditioner. With ``actnorm`` an ActNorm follows each coupling (data ->
    latent); they initialise from the first training batch (or ``initialize_actnorms``).
    """
    shape_t = as_event_shape(shape)
    assert shape_t is not None and len(shape_t) == 3
    flow = Compose(MultiScaleLevel(shape_t, scales, hidden, checker, channel, blocks=blocks,
                                   actnorm=actnorm),
                   Inverse(Logit(shape_t, alpha)), event_shape=shape_t)
    return FlowModel(flow)


def multiscale_glow(shape: Sequence[int] = MNIST_SHAPE, scales: int = 2,
                    hidden: int | Sequence[int] = 64, *, channel: int | Sequence[int] = 3,
                    alpha: float = 0.05, blocks: int = 0, seed: int = 0) -> FlowModel:
    """Glow (chapter 3) in the multi-scale layout of :func:`multiscale_realnvp`: at each scale
    squeeze, ``channel`` Glow steps (ActNorm, learned 1x1 convolution, affine channel
    coupling), split; a density on ``y`` in ``[0, 1)^D`` through the same logit transform.

    With :data:`MNIST_GLOW` it is :data:`MNIST_RECIPE` with each flip replaced by a learned
    mixing and an ActNorm per step, so the two differ only in what Glow adds. ``seed`` fixes
    the random rotations the 1x1 convolutions start from.
    """
    shape_t = as_event_shape(shape)
    assert shape_t is not None and len(shape_t) == 3
    g = torch.Generator().manual_seed(seed)
    level = MultiScaleLevel(shape_t, scales, hidden, [0] * scales, channel, blocks=blocks, glow=g)
    return FlowModel(Compose(level, Inverse(Logit(shape_t, alpha)), event_shape=shape_t))


# The book's MNIST flows (chapter 5, `python -m nfcourse train mnist`). No coupling runs at
# 28x28, where convolutions cost the most: squeeze to 4x14x14, channel couplings, split off
# half, squeeze to 8x7x7, channel couplings. Gated residual conditioners, no ActNorm, a small
# logit margin. MNIST_RECIPE is the pretrained model's layout (widths per resolution 28, 14,
# 7; nothing runs at 28), MNIST_PAGE the smaller one trained on the page in minutes.
MNIST_RECIPE: dict[str, Any] = {"scales": 2, "hidden": [48, 48, 64], "checker": [0, 0],
                                "channel": [3, 4], "blocks": 2, "alpha": 1e-5,
                                "actnorm": False}
MNIST_PAGE: dict[str, Any] = {"scales": 2, "hidden": [32, 32, 64], "checker": [0, 0],
                              "channel": [2, 4], "blocks": 1, "alpha": 1e-5, "actnorm": False}
# Chapter 3's Glow on MNIST: MNIST_RECIPE's layout and conditioners with Glow steps.
MNIST_GLOW: dict[str, Any] = {"scales": 2, "hidden": [48, 48, 64], "channel": [3, 4],
                              "blocks": 2, "alpha": 1e-5}
# ... and their learned dequantisers (VariationalDequantizer arguments): for the page, one
# plain conditional coupling, nearly free to run.
MNIST_DEQUANTIZER: dict[str, Any] = {"hidden": 8, "couplings": 2, "blocks": 1}
MNIST_PAGE_DEQUANTIZER: dict[str, Any] = {"hidden": 16, "couplings": 1, "blocks": 0}


def cnf_from_spec(*, train_solver: SolverSpec | dict[str, Any] | None = None,
                  eval_solver: SolverSpec | dict[str, Any] | None = None,
                  **kwargs: Any) -> CNF:
    """Build a :class:`CNF` from :meth:`CNF.model_spec` keyword arguments (the checkpoint
    builder ``"cnf"``): solver specs may be given as the dicts a checkpoint stores."""
    def as_spec(value: SolverSpec | dict[str, Any] | None) -> SolverSpec | None:
        return SolverSpec(**value) if isinstance(value, dict) else value

    return CNF(train_solver=as_spec(train_solver), eval_solver=as_spec(eval_solver), **kwargs)


# name -> builder(**kwargs); the name is what a checkpoint's model_spec stores.
BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "realnvp": realnvp,                        # chapter 2, fit() and the CLI
    "nice": nice,
    "maf": maf,                                # chapter 10, autoregressive and spline flows
    "iaf": iaf,
    "nsf": nsf,
    "glow": glow,                              # chapter 3, Glow on digits
    "glow_2d": glow_2d,
    "cnf": cnf_from_spec,                      # chapter 4, CNF / FFJORD
    "tiny_realnvp": tiny_realnvp,              # chapter 5, MNIST
    "multiscale_realnvp": multiscale_realnvp,
    "multiscale_glow": multiscale_glow,        # chapter 3, Glow on MNIST
    "velocity_mlp": VelocityMLP,               # chapter 6, flow matching
    "planar_model": planar_model,              # chapter 11, variational families
    "radial_model": radial_model,
    "mean_field": mean_field,
    "vae": VAE,                                # chapter 8, a bare VAE
    "vae_elbo": elbo_objective,                # chapter 8, what fit() trains
}

# The models `python -m nfcourse train` builds for 2-D data (its --model choices).
TWO_D_MODELS: tuple[str, ...] = ("nice", "realnvp")

# Builders added at run time with register_model (user models); the built-in ones are above.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def model_names() -> list[str]:
    """Every name :func:`build_model` accepts, built-in and registered, sorted."""
    return sorted({*BUILTIN_MODELS, *MODEL_BUILDERS})


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder`` available to :func:`build_model` under ``name`` (names must be new).

    Only a process that has called this can load such checkpoints; the book's own models are
    in :data:`BUILTIN_MODELS` and need no registration.
    """
    if name in MODEL_BUILDERS or name in BUILTIN_MODELS:
        raise ValueError(f"a model called {name!r} is already registered.")
    MODEL_BUILDERS[name] = builder


def resolve_builder(name: object) -> Callable[..., nn.Module]:
    """The builder for ``name``: a registered one or a built-in one."""
    if isinstance(name, str) and name in MODEL_BUILDERS:
        return MODEL_BUILDERS[name]
    if not isinstance(name, str) or name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())} "
                         "(or register_model() your own builder first).")
    return BUILTIN_MODELS[name]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"name": "realnvp", "kwargs": {"layers": 8, ...}}``."""
    return resolve_builder(spec.get("name"))(**spec.get("kwargs", {}))
