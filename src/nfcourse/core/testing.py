"""``check_flow``: the test every transform in nfcourse must pass.

It checks, in float64 on a copy of the flow:

1. shapes: outputs keep the input's shape (or map it to the declared ``data_shape``),
   ``logdet`` has shape ``[B]``;
2. round trip: ``inverse(forward(z)) == z`` and ``forward(inverse(x)) == x``;
3. consistency: forward and inverse log-dets sum to zero;
4. truth: each log-det equals ``log|det J|`` of the Jacobian that autograd computes by brute
   force (one backward pass per output coordinate), and samples do not leak into each other
   (the Jacobian is block-diagonal over the batch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcourse.core.flow import Flow


@dataclass(frozen=True)
class FlowCheck:
    """Largest absolute errors found by :func:`check_flow` (all in float64)."""

    roundtrip: float
    logdet_sum: float
    logdet_forward_vs_autograd: float
    logdet_inverse_vs_autograd: float
    cross_sample_jacobian: float


def autograd_logdet(fn, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Brute-force ``log|det d fn(v)/d v|`` per sample.

    ``fn`` maps ``[B, *event] -> [B, *event]``. Returns ``(logdet [B], leak)`` where ``leak`` is
    the largest entry of the Jacobian between different samples (0 for a per-sample map).
    """
    b = inputs.shape[0]
    d = inputs[0].numel()
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(inputs.shape)).reshape(b, d),
                                             inputs.reshape(b, d))  # [B, D, B, D]
    idx = torch.arange(b)
    blocks = jac[idx, :, idx, :]                                   # [B, D, D]
    mask = torch.ones(b, b, dtype=torch.bool)
    mask[idx, idx] = False
    leak = jac.permute(0, 2, 1, 3)[mask].abs().max() if b > 1 else jac.new_zeros(())
    return torch.linalg.slogdet(blocks)[1], leak


def check_flow(flow: Flow, z: Tensor, *, atol: float = 1e-6, rtol: float = 1e-6,
               check_jacobian: bool = True) -> FlowCheck:
    """Assert that ``flow`` is a correct bijection with correct log-dets at the points ``z``.

    Args:
        flow: any :class:`~nfcourse.core.flow.Flow`; it is copied and cast to float64, the
            original is left untouched.
        z: ``[B, *event]`` points in the forward direction's domain.
        atol, rtol: tolerances, applied as ``|a - b| <= atol + rtol * |b|``.
        check_jacobian: compare with autograd's Jacobian (costs ``B*D`` backward passes).

    Raises:
        AssertionError naming the check that failed and its worst error.
    Returns:
        the errors measured, for reporting.
    """
    f = copy.deepcopy(flow).double()
    z = z.detach().double()

    def close(name: str, a: Tensor, b: Tensor) -> float:
        err = (a - b).detach().abs()
        b = b.detach()
        bad = err > atol + rtol * b.abs()
        if bool(bad.any()):
            raise AssertionError(f"check_flow({type(flow).__name__}): {name} fails, worst "
                                 f"|error| = {err.max().item():.3e} (atol={atol}, rtol={rtol})")
        return float(err.max()) if err.numel() else 0.0

    x, ld_f = f.forward(z)
    # A flow keeps the shape unless it declares a different data side (a reshape).
    expected = (z.shape[0], *f.data_shape) if f.data_shape is not None and \
        f.data_shape != f.event_shape else tuple(z.shape)
    if tuple(x.shape) != tuple(expected):
        raise AssertionError(f"check_flow: forward mapped the shape {list(z.shape)} to "
                             f"{list(x.shape)}, expected {list(expected)}")
    if ld_f.shape != (z.shape[0],):
        raise AssertionError(f"check_flow: forward logdet has shape {list(ld_f.shape)}, "
                             f"expected [{z.shape[0]}]")
    z_back, ld_i = f.inverse(x)
    if ld_i.shape != (z.shape[0],):
        raise AssertionError(f"check_flow: inverse logdet has shape {list(ld_i.shape)}, "
                             f"expected [{z.shape[0]}]")
    rt = close("round trip inverse(forward(z)) == z", z_back, z)
    x_again, _ = f.forward(z_back)
    rt = max(rt, close("round trip forward(inverse(x)) == x", x_again, x))
    ls = close("forward logdet + inverse logdet == 0", ld_f + ld_i, torch.zeros_like(ld_f))

    fwd_err = inv_err = leak_max = 0.0
    if check_jacobian:
        ld_auto_f, leak_f = autograd_logdet(lambda v: f.forward(v)[0], z)
        fwd_err = close("forward logdet == log|det autograd Jacobian|", ld_f, ld_auto_f)
        ld_auto_i, leak_i = autograd_logdet(lambda v: f.inverse(v)[0], x.detach())
        inv_err = close("inverse logdet == log|det autograd Jacobian|", ld_i, ld_auto_i)
        leak_max = float(max(leak_f, leak_i))
        if leak_max > atol:
            raise AssertionError(f"check_flow({type(flow).__name__}): samples in a batch "
                                 f"influence each other (Jacobian entry {leak_max:.3e})")
    return FlowCheck(rt, ls, fwd_err, inv_err, leak_max)
