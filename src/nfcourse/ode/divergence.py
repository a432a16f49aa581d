"""The divergence ``tr(dv/dx)`` of a vector field, exactly or by Hutchinson's estimator.

A CNF needs ``div v(x) = sum_i d v_i / d x_i`` at every function evaluation. Both estimators
here take the field's output ``v = field(x)`` (``[B, D]``) together with the input ``x``
(``[B, D]``, part of the autograd graph that produced ``v``) and return one value per sample
(``[B]``); samples never mix because ``v[b]`` depends on ``x[b]`` only.

* :func:`divergence_exact`: ``D`` vector-Jacobian products with the unit vectors, keeping
  the diagonal entry of each row: exact, ``D`` backward passes (cheap for ``D = 2``).
* :func:`divergence_hutchinson`: one vector-Jacobian product ``e^T J`` with a random probe
  ``e`` (``E[e] = 0``, ``Cov(e) = I``), then ``(e^T J) e``, whose expectation is ``tr(J)``:
  one backward pass whatever ``D`` is. FFJORD draws ``e`` once per solve and keeps it fixed,
  so the integrated log-density is an unbiased estimate of a *fixed* ODE's solution.

The lecture's version, ``e^T f(z)``, multiplies the probe by the field itself instead of by
its Jacobian; its expectation is ``0``, not the trace (chapter 4 shows this numerically).
"""

from __future__ import annotations

import torch
from torch import Tensor

PROBES = ("gaussian", "rademacher")


def _check_pair(v: Tensor, x: Tensor, who: str) -> None:
    if v.dim() != 2 or v.shape != x.shape:
        raise ValueError(f"{who}: expected the field's output and its input to have the same "
                         f"shape [B, D], got {list(v.shape)} and {list(x.shape)}.")
    if not v.requires_grad:
        raise ValueError(f"{who}: the field's output does not depend on x through autograd; "
                         "compute it from x.requires_grad_() inside torch.enable_grad().")


def jacobian_rows(v: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """The per-sample Jacobians ``dv/dx``: ``[B, D, D]`` (row ``i`` is ``d v_i / d x``)."""
    _check_pair(v, x, "jacobian_rows")
    rows = []
    for i in range(v.shape[1]):
        (g,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph,
                                   retain_graph=True)
        rows.append(g)
    return torch.stack(rows, dim=1)


def divergence_exact(v: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """``tr(dv/dx)`` per sample, ``[B]``, with one backward pass per dimension.

    ``create_graph=True`` keeps the result differentiable (needed when training on it).
    """
    _check_pair(v, x, "divergence_exact")
    div = v.new_zeros(v.shape[0])
    for i in range(v.shape[1]):
        # Summing over the batch is safe: v[:, i] of sample b depends on x[b] only.
        (g,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph,
                                   retain_graph=True)
        div = div + g[:, i]
    return div


def sample_probe(shape: tuple[int, ...] | torch.Size, kind: str = "rademacher",
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """A Hutchinson probe ``e`` of ``shape``: ``N(0, 1)`` or ``+-1`` entries, each with mean 0
    and variance 1."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * bits - 1).to(dtype)
    raise ValueError(f"sample_probe: unknown probe {kind!r}; choose one of {', '.join(PROBES)}.")


def divergence_hutchinson(v: Tensor, x: Tensor, probe: Tensor, create_graph: bool = False
                          ) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate ``e^T (dv/dx) e`` per sample, and the row vector ``e^T dv/dx``.

    Args:
        v, x: ``[B, D]`` field output and input.
        probe: ``e``, ``[B, D]``.
    Returns:
        ``(estimate [B], vjp [B, D])``; ``|vjp|^2`` is an unbiased estimate of the squared
        Frobenius norm of the Jacobian, which RNODE's regulariser uses.
    """
    _check_pair(v, x, "divergence_hutchinson")
    if probe.shape != v.shape:
        raise ValueError(f"divergence_hutchinson: the probe has shape {list(probe.shape)}, "
                         f"expected {list(v.shape)} (one probe vector per sample).")
    (vjp,) = torch.autograd.grad(v, x, probe, create_graph=create_graph, retain_graph=True)
    return (vjp * probe).sum(dim=1), vjp


def hutchinson_variance(jacobian: Tensor, kind: str) -> Tensor:
    """The variance of one probe's estimate ``e^T J e`` of ``tr(J)``, in closed form.

    With ``S = (J + J^T)/2`` (only the symmetric part matters, ``e^T J e = e^T S e``):
    Gaussian probes give ``2 ||S||_F^2``; Rademacher probes ``2 (||S||_F^2 - sum_i S_ii^2)``,
    which removes the diagonal's contribution; hence Rademacher is never worse.
    ``jacobian``: ``[..., D, D]`` -> ``[...]``.
    """
    s = 0.5 * (jacobian + jacobian.transpose(-1, -2))
    fro2 = s.square().sum(dim=(-1, -2))
    if kind == "gaussian":
        return 2 * fro2
    if kind == "rademacher":
        return 2 * (fro2 - torch.diagonal(s, dim1=-2, dim2=-1).square().sum(-1))
    raise ValueError(f"hutchinson_variance: unknown probe {kind!r}; choose one of "
                     f"{', '.join(PROBES)}.")


def hutchinson_trace(jacobian: Tensor, n_probes: int, kind: str = "rademacher",
                     generator: torch.Generator | None = None) -> Tensor:
    """``n_probes`` independent single-probe estimates ``e^T J e`` of ``tr(J)`` for one matrix.

    ``jacobian``: ``[D, D]`` -> ``[n_probes]``. A study tool: it multiplies by a stored matrix,
    whereas a CNF never forms ``J`` and uses :func:`divergence_hutchinson`.
    """
    if jacobian.dim() != 2 or jacobian.shape[0] != jacobian.shape[1]:
        raise ValueError(f"hutchinson_trace: expected a square matrix [D, D], got "
                         f"{list(jacobian.shape)}.")
    if n_probes < 1:
        raise ValueError(f"hutchinson_trace: n_probes must be >= 1, got {n_probes}.")
    e = sample_probe((n_probes, jacobian.shape[0]), kind, generator, jacobian.dtype,
                     jacobian.device)
    return torch.einsum("ni,ij,nj->n", e, jacobian, e)

