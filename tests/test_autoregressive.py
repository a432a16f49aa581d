"""MADE and the masked autoregressive flows (MAF, IAF; affine and spline transformers)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import nfcourse as nf
from nfcourse.core import Inverse
from nfcourse.core.testing import check_flow
from nfcourse.flows import MADE, MaskedAutoregressive, MaskedLinear
from nfcourse.flows.autoregressive import effective_parameters, made_degrees


def _perturb(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


ORDERS = [None, [3, 1, 4, 0, 2], [4, 3, 2, 1, 0]]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_made_jacobian_is_strictly_triangular_in_its_order(order: list[int] | None,
                                                           depth: int) -> None:
    d, p = 5, 3
    # tanh, not ReLU: no unit is switched off at the test point, so every allowed path shows
    made = _perturb(MADE(d, p, hidden=12, depth=depth, order=order,
                         activation=nn.Tanh)).double()
    x = torch.randn(1, d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v), x)[0, :, :, 0, :]  # [D, P, D]
    position = torch.empty(d, dtype=torch.long)
    position[torch.as_tensor(order or list(range(d)))] = torch.arange(d)
    for i in range(d):
        for j in range(d):
            block = jac[i, :, j]
            if position[j] >= position[i]:  # j not before i: no dependence at all
                assert torch.equal(block, torch.zeros_like(block)), (i, j)
            else:                           # j before i: the connection exists
                assert bool((block != 0).any()), (i, j)
    # in the order, the Jacobian is strictly lower triangular
    perm = torch.as_tensor(order or list(range(d)))
    ordered = jac[perm][:, :, perm].abs().sum(dim=1)
    assert torch.equal(ordered.triu(), torch.zeros_like(ordered))


def test_made_first_coordinate_depends_on_nothing() -> None:
    made = _perturb(MADE(4, 2, hidden=8, order=[2, 0, 1, 3]))
    out = made(torch.randn(50, 4))
    assert out.shape == (50, 4, 2)
    # the first coordinate in the order, 2, gets constant parameters (the bias alone)
    assert torch.allclose(out[:, 2], out[:1, 2].expand(50, 2))


def test_made_degrees_and_bad_orders() -> None:
    inputs, hidden = made_degrees(3, 4, 1, order=[2, 0, 1])
    assert inputs.tolist() == [2, 3, 1] and hidden.tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="permutation"):
        made_degrees(3, 4, 1, order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"\[out, in\]"):
        MaskedLinear(3, 2, torch.ones(3, 2))
    with pytest.raises(ValueError, match="MADE needs"):
        MADE(0, 2)


FLOWS = [(conv, tr) for conv in ("maf", "iaf") for tr in ("affine", "spline")]


def _flow(conv: str, tr: str, d: int = 4, order: list[int] | None = None) -> nn.Module:
    torch.manual_seed(0)
    flow = MaskedAutoregressive(d, hidden=8, depth=2, transformer=tr, convention=conv,
                                order=order, bins=5, bound=2.0)
    return _perturb(flow)


@pytest.mark.parametrize("conv, tr", FLOWS)
@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_masked_autoregressive_passes_check_flow(conv: str, tr: str,
                                                 order: list[int] | None) -> None:
    flow = _flow(conv, tr, order=order)
    z = 1.5 * torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    check_flow(flow, z)
    flow.double()
    with torch.no_grad():
        x, _ = flow.forward(z.double())
    check_flow(Inverse(flow), x)
    for direction in (flow.forward, flow.inverse):
        out, ld = direction(z[:0].double())
        assert out.shape == (0, 4) and ld.shape == (0,)


@pytest.mark.parametrize("conv, tr", FLOWS)
def test_new_layer_is_the_identity(conv: str, tr: str) -> None:
    flow = MaskedAutoregressive(3, 16, transformer=tr, convention=conv)
    z = torch.randn(20, 3)
    for direction in (flow.forward, flow.inverse):
        out, ld = direction(z)
        torch.testing.assert_close(out, z, rtol=0, atol=1e-6)
        torch.testing.assert_close(ld, torch.zeros(20), rtol=0, atol=1e-6)


def _count_made_calls(flow: MaskedAutoregressive, fn, v: Tensor) -> int:
    calls = []
    handle = flow.made.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            fn(v)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("tr", ["affine", "spline"])
@pytest.mark.parametrize("d", [1, 2, 7])
def test_maf_scores_in_one_pass_and_samples_in_d_iaf_the_reverse(tr: str, d: int) -> None:
    v = torch.randn(5, d)
    maf = MaskedAutoregressive(d, 8, transformer=tr, convention="maf")
    iaf = MaskedAutoregressive(d, 8, transformer=tr, convention="iaf")
    assert _count_made_calls(maf, maf.inverse, v) == 1   # density: one pass
    assert _count_made_calls(maf, maf.forward, v) == d   # sampling: D passes
    assert _count_made_calls(iaf, iaf.forward, v) == 1   # sampling: one pass
    assert _count_made_calls(iaf, iaf.inverse, v) == d   # density of given data: D passes


def test_the_sequential_direction_needs_all_d_passes() -> None:
    """With D - 1 passes the last coordinate in the order is still wrong: D is needed."""
    flow = _flow("maf", "affine", d=4).double()
    z = torch.randn(3, 4, dtype=torch.float64)
    x, _ = flow.forward(z)
    approx = torch.zeros_like(z)
    for _ in range(3):
        approx, _ = flow.transformer(z, flow.made(approx))
    assert torch.allclose(approx[:, :3], x[:, :3]) and not torch.allclose(approx[:, 3], x[:, 3])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="'maf' or 'iaf'"):
        MaskedAutoregressive(2, convention="vae")
    with pytest.raises(ValueError, match="'affine' or 'spline'"):
        MaskedAutoregressive(2, transformer="cubic")
    with pytest.raises(ValueError, match="bins >= 1"):
        MaskedAutoregressive(2, transformer="spline", bins=0)
    with pytest.raises(ValueError, match="> 0"):
        MaskedAutoregressive(2, transformer="spline", bound=-1.0)
    with pytest.raises(ValueError, match="features"):
        MaskedAutoregressive(0)
    with pytest.raises(ValueError, match=r"expected shape \[B, 3\]"):
        MaskedAutoregressive(3).inverse(torch.zeros(2, 4))


# ----------------------------------------------------------------------------- the models


@pytest.mark.parametrize("build", [
    lambda: nf.models.maf(3, 3, 8), lambda: nf.models.iaf(3, 3, 8),
    lambda: nf.models.maf(3, 2, 8, transformer="spline", bins=4),
    lambda: nf.models.nsf(3, 3, 8, bins=4), lambda: nf.models.nsf(3, 2, 8, kind="autoregressive"),
])
def test_models_are_normalised_flows_that_start_as_the_base(build) -> None:
    model = build()
    x = torch.randn(10, 3)
    torch.testing.assert_close(model.log_prob(x), model.base.log_prob(x), rtol=0, atol=1e-5)
    _perturb(model, scale=0.2)
    check_flow(model.flow, torch.randn(4, 3, generator=torch.Generator().manual_seed(4)))
    samples, lp = model.sample_and_log_prob(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.log_prob(samples), lp, rtol=1e-4, atol=1e-4)


def test_autoregressive_models_alternate_their_orders() -> None:
    layers = nf.models.maf(3, 3, 8).flow
    degrees = [layer.made.input_degrees.tolist() for layer in layers]
    assert degrees == [[1, 2, 3], [3, 2, 1], [1, 2, 3]]


def test_nsf_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'coupling' or 'autoregressive'"):
        nf.models.nsf(2, kind="mixture")


def test_effective_parameters_leave_out_the_masked_weights() -> None:
    # in 2-D, MADE's first coordinate reads nothing and the second reads the first only: the
    # same network as a coupling's (1 input) plus constant parameters for coordinate 1
    made = MADE(2, 3, hidden=5, depth=1)
    full = (2 * 5 + 5) + (5 * 6 + 6)
    assert sum(p.numel() for p in made.parameters()) == full
    assert effective_parameters(made) == (1 * 5 + 5) + (5 * 3 + 6)
    assert effective_parameters(nf.models.realnvp(2, 2, 8)) == sum(
        p.numel() for p in nf.models.realnvp(2, 2, 8).parameters())
