"""The flow protocol, chapter 1's flows, check_flow itself, FlowModel and input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfcourse as nf
from nfcourse.core.flow import Flow
from nfcourse.core.testing import autograd_logdet


def _points_for(flow: Flow, batch: int, g: torch.Generator) -> torch.Tensor:
    """Valid inputs in the forward domain of ``flow``."""
    if isinstance(flow, nf.Polar):
        r = torch.rand(batch, generator=g) * 3 + 0.05
        theta = (torch.rand(batch, generator=g) * 2 - 1) * 3.0
        return torch.stack([r, theta], dim=1)
    if isinstance(flow, nf.Logit):
        return torch.rand(batch, *flow.event_shape, generator=g) * 0.98 + 0.01
    shape = flow.event_shape or (3,)
    return torch.randn(batch, *shape, generator=g) * 2


def _make(name: str, dim: int, g: torch.Generator) -> Flow:
    makers = {
        "affine": lambda: nf.ElementwiseAffine(dim, log_scale=torch.randn(dim, generator=g),
                                               shift=torch.randn(dim, generator=g)),
        "exp": lambda: nf.Exp(dim),
        "sigmoid": lambda: nf.Sigmoid(dim),
        "logit": lambda: nf.Logit(dim),
        "logit-alpha": lambda: nf.Logit(dim, alpha=0.1),
        "polar": lambda: nf.Polar(),
        "planar": lambda: nf.Planar(dim, generator=g, init_scale=2.0),
        "radial": lambda: nf.Radial(dim, generator=g),
        "compose": lambda: nf.Compose(nf.Planar(dim, generator=g), nf.Radial(dim, generator=g),
                                      nf.ElementwiseAffine(dim, shift=0.5), nf.Planar(dim, generator=g)),
        "inverse-planar": lambda: nf.Inverse(nf.Planar(dim, generator=g)),
    }
    return makers[name]()


FLOWS = ["affine", "exp", "sigmoid", "logit", "logit-alpha", "polar", "planar", "radial", "compose",
         "inverse-planar"]


@pytest.mark.parametrize("name", FLOWS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.sampled_from([1, 2, 7]),
       dim=st.sampled_from([1, 2, 5]))
def test_every_flow_passes_check_flow(name: str, seed: int, batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(seed)
    if name == "polar":
        dim = 2
    flow = _make(name, dim, g)
    report = nf.check_flow(flow, _points_for(flow, batch, g), atol=1e-7, rtol=1e-7)
    assert report.roundtrip < 1e-7


class _WrongSign(nf.ElementwiseAffine):
    """A deliberately broken flow: correct map, log-det with the wrong sign."""

    def _forward(self, z):
        x, ld = super()._forward(z)
        return x, -ld


class _WrongInverse(nf.ElementwiseAffine):
    def _inverse(self, x):
        z, ld = super()._inverse(x)
        return z + 1e-3, ld


class _Leaky(Flow):
    """Correct per-sample log-det but each sample depends on the batch mean."""

    def _forward(self, z):
        return z + 0.1 * z.mean(0, keepdim=True), z.new_zeros(z.shape[0])

    def _inverse(self, x):
        # mean(x) = 1.1 mean(z)
        return x - 0.1 * x.mean(0, keepdim=True) / 1.1, x.new_zeros(x.shape[0])


def test_check_flow_catches_sign_flipped_logdet(gen) -> None:
    flow = _WrongSign(3, log_scale=torch.tensor([0.5, -0.2, 0.3]))
    with pytest.raises(AssertionError, match="logdet"):
        nf.check_flow(flow, torch.randn(4, 3, generator=gen))


def test_check_flow_catches_wrong_inverse(gen) -> None:
    with pytest.raises(AssertionError, match="round trip"):
        nf.check_flow(_WrongInverse(2), torch.randn(4, 2, generator=gen))


def test_check_flow_catches_samples_leaking_across_the_batch(gen) -> None:
    with pytest.raises(AssertionError, match="influence each other|autograd"):
        nf.check_flow(_Leaky(2), torch.randn(4, 2, generator=gen))


def test_check_flow_leaves_the_original_flow_in_float32(gen) -> None:
    flow = nf.Planar(2, generator=gen)
    nf.check_flow(flow, torch.randn(3, 2, generator=gen))
    assert flow.w.dtype == torch.float32


def test_autograd_logdet_of_a_linear_map_is_log_abs_det() -> None:
    a = torch.tensor([[2.0, 1.0], [0.5, -3.0]], dtype=torch.float64)
    ld, leak = autograd_logdet(lambda v: v @ a.T, torch.randn(3, 2, dtype=torch.float64))
    assert torch.allclose(ld, torch.full((3,), math.log(abs(torch.det(a).item())),
                                         dtype=torch.float64))
    assert leak == 0


def test_polar_logdet_is_log_r() -> None:
    z = torch.tensor([[2.0, 0.3], [0.5, -2.0]])
    _, ld = nf.Polar().forward(z)
    assert torch.allclose(ld, torch.log(z[:, 0]))


def test_planar_constraint_keeps_w_dot_u_hat_above_minus_one(gen) -> None:
    for _ in range(20):
        flow = nf.Planar(3, generator=gen, init_scale=5.0)
        with torch.no_grad():
            flow.u.copy_(-10 * flow.w)  # pushes w.u far below -1
        assert float(flow.w.detach() @ flow.u_hat().detach()) > -1 + 5e-4  # margin 1e-3, less round-off


def test_radial_inverse_near_its_centre(gen) -> None:
    flow = nf.Radial(2, generator=gen).double()
    z = flow.z0.detach()[None] + 1e-9
    x, _ = flow.forward(z)
    z_back, _ = flow.inverse(x)
    assert torch.allclose(z_back, z, atol=1e-12)


def test_compose_adds_logdets_and_runs_inverse_in_reverse(gen) -> None:
    a, b = nf.Planar(2, generator=gen), nf.Radial(2, generator=gen)
    z = torch.randn(5, 2, generator=gen)
    x1, l1 = a.forward(z)
    x2, l2 = b.forward(x1)
    x, ld = nf.Compose(a, b).forward(z)
    assert torch.allclose(x, x2) and torch.allclose(ld, l1 + l2)
    assert len(nf.Compose(a, b).trajectory(z)) == 3


def test_standard_normal_matches_torch_distributions(gen) -> None:
    base = nf.StandardNormal(3)
    z = torch.randn(10, 3, generator=gen)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(base.log_prob(z), ref, atol=1e-6)


def test_flow_model_density_integrates_to_one(gen) -> None:
    model = nf.FlowModel(nf.Compose(nf.Planar(2, generator=gen), nf.Radial(2, generator=gen),
                                    nf.ElementwiseAffine(2, log_scale=0.3)))
    n, lim = 400, 12.0
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    pts = torch.cartesian_prod(xs, xs)
    with torch.no_grad():
        mass = model.double().log_prob(pts).exp().sum() * (xs[1] - xs[0]) ** 2
    assert abs(mass.item() - 1) < 2e-3


def test_sample_and_log_prob_agrees_with_log_prob(gen) -> None:
    model = nf.FlowModel(nf.Compose(nf.Planar(2, generator=gen), nf.Radial(2, generator=gen)))
    x, lp = model.sample_and_log_prob(64, generator=gen)
    assert torch.allclose(lp, model.log_prob(x), atol=1e-4)


def test_model_follows_dtype() -> None:
    model = nf.FlowModel(nf.Planar(2)).double()
    x = model.sample(5)
    assert x.dtype == torch.float64 and model.log_prob(x).dtype == torch.float64


# Bad input ---------------------------------------------------------------------------------

def test_wrong_feature_size_names_expected_and_actual() -> None:
    with pytest.raises(ValueError, match=r"expected shape \[B, 2\], got \[4, 3\]"):
        nf.Planar(2).forward(torch.zeros(4, 3))


def test_missing_batch_dimension_is_explained() -> None:
    with pytest.raises(ValueError, match="unsqueeze"):
        nf.FlowModel(nf.Planar(2)).log_prob(torch.zeros(2))


def test_nan_input_is_rejected() -> None:
    x = torch.zeros(4, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        nf.FlowModel(nf.Planar(2)).log_prob(x)


def test_integer_and_mismatched_dtypes_are_rejected() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        nf.Planar(2).forward(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="float32"):
        nf.Planar(2).forward(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nf.Planar(2).forward([[0.0, 0.0]])


def test_wrong_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="device"):
        nf.Planar(2).forward(torch.zeros(4, 2, device="meta"))


def test_domain_errors_say_what_the_domain_is() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        nf.Sigmoid(2).inverse(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="> 0"):
        nf.Exp(1).inverse(torch.tensor([[-1.0]]))
    with pytest.raises(ValueError, match="origin"):
        nf.Polar().inverse(torch.zeros(1, 2))


def test_validation_can_be_switched_off_for_speed() -> None:
    with nf.validation(False):
        nf.Planar(2).forward(torch.full((1, 2), float("nan")))  # no error raised
    with pytest.raises(ValueError):
        nf.Planar(2).forward(torch.full((1, 2), float("nan")))


def test_validation_off_skips_the_parameter_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    import nfcourse.core.flow as flow_module

    def walk(module: torch.nn.Module) -> None:
        raise AssertionError("module_dtype_device called")

    monkeypatch.setattr(flow_module, "module_dtype_device", walk)
    with nf.validation(False):
        nf.Planar(2).forward(torch.zeros(1, 2))
    with pytest.raises(AssertionError, match="module_dtype_device called"):
        nf.Planar(2).forward(torch.zeros(1, 2))


def test_compose_rejects_non_flows() -> None:
    with pytest.raises(TypeError, match="not a Flow"):
        nf.Compose(nf.Planar(2), torch.nn.Linear(2, 2))  # type: ignore[arg-type]
