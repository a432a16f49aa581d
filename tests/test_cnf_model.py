"""The CNF: closed forms for linear fields, check_flow, adjoint gradients, NFE, errors."""

import math

import pytest
import torch

from nfcourse.flows import CNF, ContinuousFlow, LinearField
from nfcourse.nn import VelocityMLP
from nfcourse.ode import SolverSpec, convergence_order
from nfcourse.metrics.stats import mean_se
from nfcourse.core.testing import check_flow

TIGHT = SolverSpec("dopri5", rtol=1e-10, atol=1e-10)
A = torch.tensor([[-0.4, 1.3], [-0.8, 0.7]], dtype=torch.float64)


def _linear_flow(divergence="exact", solver=TIGHT, T=1.5):
    return ContinuousFlow(LinearField(A), dim=2, T=T, train_solver=solver, eval_solver=solver,
                          train_divergence=divergence, eval_divergence=divergence).double()


def _log_normal(z):
    return -0.5 * z.square().sum(1) - math.log(2 * math.pi)


def _random_cnf(seed=0, hidden=16):
    torch.manual_seed(seed)
    model = CNF(2, hidden=hidden, layers=2)
    torch.nn.init.normal_(model.cflow.field.out.weight, std=0.5)  # not the identity at init
    return model.double().eval()


def test_linear_field_log_prob_is_the_closed_form():
    flow = _linear_flow().eval()
    x = torch.randn(6, 2, dtype=torch.float64)
    z, logdet = flow.inverse(x)
    T, trace = flow.T, float(torch.trace(A))
    assert torch.allclose(logdet, torch.full_like(logdet, -T * trace), atol=1e-9)
    assert torch.allclose(z, flow.field.flow_map(x, -T), atol=1e-8)
    x_fwd, logdet_fwd = flow.forward(z)
    assert torch.allclose(logdet_fwd, torch.full_like(logdet_fwd, T * trace), atol=1e-9)
    assert torch.allclose(x_fwd, x, atol=1e-8)
    # and as a density model: log p(x) = log N(expm(-T A) x) - T tr(A)
    model = CNF(2).double().eval()
    model.flow = flow
    assert torch.allclose(model.log_prob(x), _log_normal(z) - T * trace, atol=1e-8)


def test_rk4_integrates_the_constant_divergence_exactly():
    # dl/dt = tr(A) is constant, so any Runge-Kutta method gets l right; only x carries the
    # method's error
    flow = _linear_flow(solver=SolverSpec("rk4", steps=3)).eval()
    x = torch.randn(4, 2, dtype=torch.float64)
    z, logdet = flow.inverse(x)
    assert torch.allclose(logdet, torch.full_like(logdet, -flow.T * float(torch.trace(A))),
                          atol=1e-12)
    err = (z - flow.field.flow_map(x, -flow.T)).abs().max()
    assert 1e-6 < err < 1e-2


def test_cnf_is_a_correct_flow_with_a_tight_adaptive_solver():
    model = _random_cnf()
    z = torch.randn(4, 2, dtype=torch.float64)
    with model.cflow.override(solver=TIGHT):
        result = check_flow(model.cflow, z, atol=1e-6, rtol=1e-6)
    assert result.roundtrip < 1e-7


def test_fixed_step_rk4_round_trip_error_is_fourth_order():
    # A fixed-step RK4 solve run backwards is not the exact inverse of the forward solve, and
    # its integrated divergence is not the exact log-det of the discrete map: both
    # discrepancies are discretisation errors, at least O(h^4). So check_flow passes only at
    # a tolerance set by h (1e-3 here, for 4 to 16 steps), and the measured errors shrink at
    # least like h^4 (the round trip even like h^5: the leading errors of the forward and the
    # backward solve partly cancel).
    model = _random_cnf(seed=3)
    z = torch.randn(4, 2, dtype=torch.float64)
    steps = [4, 8, 16]
    checks = []
    for n in steps:
        with model.cflow.override(solver=SolverSpec("rk4", steps=n)):
            checks.append(check_flow(model.cflow, z, atol=1e-3, rtol=0))
    assert checks[0].roundtrip > 1e-7  # the discrepancy is real, not round-off
    for name in ("roundtrip", "logdet_sum", "logdet_forward_vs_autograd",
                 "logdet_inverse_vs_autograd"):
        order = convergence_order(steps, [getattr(c, name) for c in checks])
        assert 3.5 < order < 6, (name, order)


def test_round_trip_x_to_z_to_x_in_float32():
    model = _random_cnf(seed=5).float()
    x = torch.randn(64, 2)
    with torch.no_grad():
        z, ld_inv = model.cflow.inverse(x)
        x_back, ld_fwd = model.cflow.forward(z)
    assert (x_back - x).abs().max() < 1e-4
    assert (ld_inv + ld_fwd).abs().max() < 1e-4
    with torch.no_grad():
        assert torch.allclose(model.cflow.transport(z, to_data=True), x_back, atol=1e-5)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_log_prob_is_unbiased(kind):
    model = _random_cnf(seed=1)
    n = 4000
    x = torch.tensor([[0.3, -0.6]], dtype=torch.float64).expand(n, 2)
    exact = model.log_prob(x[:1]).detach()
    model.cflow.generator = torch.Generator().manual_seed(11)
    with model.cflow.override(solver=SolverSpec("rk4", steps=20), divergence=kind):
        estimates = model.log_prob(x).detach()
    mean, se = mean_se(estimates)
    assert se > 0
    assert abs(mean - float(exact)) < 3 * se + 1e-5  # + the RK4 error, ~1e-7 here
    # the same on the linear field, whose log-det -T tr(A) = -0.45 is far from 0: an estimator
    # that averaged to 0 instead of the trace (the lecture's e^T v) would fail here
    flow = _linear_flow(divergence=kind, solver=SolverSpec("rk4", steps=4)).eval()
    flow.generator = torch.Generator().manual_seed(12)
    _, logdet = flow.inverse(x)
    mean, se = mean_se(logdet)
    exact_logdet = -flow.T * float(torch.trace(A))
    assert abs(exact_logdet) > 10 * se
    assert abs(mean - exact_logdet) < 3 * se


def test_adjoint_gradients_match_direct_backprop():
    model = _random_cnf(seed=2)
    model.train()
    x = torch.randn(8, 2, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        spec = SolverSpec("dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
        with model.cflow.override(solver=spec, divergence="exact"):
            model.zero_grad()
            model.nll(x).backward()
        grads[adjoint] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert grads[False].abs().max() > 1e-3
    assert torch.allclose(grads[True], grads[False], rtol=1e-5, atol=1e-7)


def test_nfe_is_counted():
    model = _random_cnf()
    with model.cflow.override(solver=SolverSpec("rk4", steps=7)):
        model.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    assert model.cflow.last_nfe == 28
    model.log_prob(torch.zeros(3, 2, dtype=torch.float64))  # adaptive: at least 2 dopri5 steps
    assert model.cflow.last_nfe >= 8
    model.train()
    model.nll(torch.zeros(3, 2, dtype=torch.float64))
    assert len(model.cflow.nfe_history) == 1  # only solves made while training are logged


class _ConstantField(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(c)

    def forward(self, t, x):
        return self.c.expand_as(x) + 0 * x


def test_rnode_regularisers_closed_form():
    # v = A x: the Jacobian is A everywhere, so int |dv/dx|_F^2 dt = T |A|_F^2 exactly;
    # v = c: int |v|^2 dt = T |c|^2, and the divergence is zero.
    model = CNF(2, kinetic=0.5, jacobian=0.25).double()
    model.flow = _linear_flow(divergence="exact").train()
    x = torch.randn(5, 2, dtype=torch.float64)
    _, _, kin, frob = model.cflow.integrate(x, model.cflow.T, 0.0, regularize=True)
    assert torch.allclose(frob, torch.full_like(frob, model.cflow.T * float(A.square().sum())))
    loss = model.nll(x)
    with torch.no_grad():
        z, logdet = model.cflow.inverse(x)
    plain = -(_log_normal(z) + logdet).mean()
    assert torch.allclose(loss, plain + 0.5 * kin.mean() + 0.25 * frob.mean())

    c = torch.tensor([0.6, -0.2], dtype=torch.float64)
    const = ContinuousFlow(_ConstantField(c), 2, T=2.0, train_solver=SolverSpec("rk4", steps=2),
                           train_divergence="exact").double().train()
    z, logdet, kin, frob = const.integrate(x, 2.0, 0.0, regularize=True)
    assert torch.allclose(z, x - 2.0 * c)
    assert torch.allclose(kin, torch.full_like(kin, 2.0 * float(c.square().sum())))
    assert torch.allclose(logdet, torch.zeros_like(logdet)) and torch.allclose(
        frob, torch.zeros_like(frob))


def test_sample_shape_and_direction():
    model = _random_cnf().float()
    g = torch.Generator().manual_seed(0)
    # a fixed-step solver, so that both solves take the same steps (an adaptive one would
    # adapt them to the log-det component too, which sampling does not carry)
    model.cflow.eval_solver = SolverSpec("rk4", steps=10)
    with torch.no_grad():
        s = model.sample(10, generator=g)
        z = model.base.sample(10, generator=torch.Generator().manual_seed(0))
        x, _ = model.cflow.forward(z)
    assert s.shape == (10, 2)
    assert torch.allclose(s, x, atol=1e-5)  # sampling is forward = noise -> data


def test_bad_input_errors():
    model = CNF(2)
    with pytest.raises(ValueError, match=r"expected shape \[B, 2\]"):
        model.log_prob(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="dtype"):
        model.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        model.log_prob(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="RNODE weights"):
        CNF(2, kinetic=-1.0)
    with pytest.raises(ValueError, match="eval_divergence"):
        CNF(2, eval_divergence="hutch")
    with pytest.raises(ValueError, match="T must be > 0"):
        ContinuousFlow(VelocityMLP(2), 2, T=0.0)
    with pytest.raises(ValueError, match="activation"):
        VelocityMLP(2, activation="relu6")
    with pytest.raises(ValueError, match="square"):
        LinearField(torch.ones(2, 3))
    with pytest.raises(ValueError, match="divergence="):
        with model.cflow.override(divergence="trace"):
            pass


@pytest.mark.slow
def test_short_training_lowers_the_nll():
    from nfcourse.data.toy2d import two_moons
    from nfcourse.training.engine import TrainConfig, evaluate_nll, fit

    torch.manual_seed(0)
    model = CNF(2, hidden=32, layers=2, train_solver=SolverSpec("rk4", steps=4),
                eval_solver=SolverSpec("rk4", steps=8), kinetic=0.01, jacobian=0.01)
    held_out = two_moons(2000, seed=99)
    before = evaluate_nll(model, held_out)
    history = fit(model, two_moons, TrainConfig(steps=80, batch_size=256, lr=5e-3, warmup=10,
                                                eval_every=80, eval_size=1000), progress=False)
    after = evaluate_nll(model, held_out)
    assert before - after > 0.3, (before, after)
    assert len(model.cflow.nfe_history) == 80 and set(model.cflow.nfe_history) == {16}
    assert history.finished


def test_the_time_mlp_takes_a_scalar_or_a_batch_of_times():
    torch.manual_seed(0)
    x = torch.randn(4, 2)
    for field in (VelocityMLP(2, 8, 2), VelocityMLP(2, 8, 2, "tanh", 0, time_in_output=True)):
        t = torch.tensor([0.1, 0.1, 0.1, 0.1])
        same = [field(0.1, x), field(torch.tensor(0.1), x), field(t, x)]
        for out in same[1:]:
            torch.testing.assert_close(out, same[0])
        per_point = field(torch.tensor([0.0, 0.3, 0.6, 0.9]), x)
        rows = [field(float(s), x[i:i + 1]) for i, s in enumerate([0.0, 0.3, 0.6, 0.9])]
        torch.testing.assert_close(per_point, torch.cat(rows))
        with pytest.raises(ValueError, match=r"\[B\] = \[4\]"):
            field(torch.zeros(3), x)
    # the CNF's field sees t in its output layer too and starts at v = 0 (the identity flow)
    cnf_field = CNF(2, hidden=8, layers=2).cflow.field
    assert cnf_field.out.in_features == 8 + 1
    assert torch.equal(cnf_field(torch.tensor(0.5), x), torch.zeros(4, 2))
    assert VelocityMLP(2, 8, 2).out.in_features == 8      # flow matching's: hidden layers only


def test_log_prob_at_is_the_closed_form_at_every_time():
    # for dz/dt = A z, x(t) = expm(t A) z, so p_t(x) = N(expm(-t A) x) exp(-t tr A)
    model = CNF(2).double().eval()
    model.flow = _linear_flow()
    x = torch.randn(5, 2, dtype=torch.float64)
    for t in (0.0, 0.3, 1.0, model.cflow.T):
        want = _log_normal(model.cflow.field.flow_map(x, -t)) - t * float(torch.trace(A))
        assert torch.allclose(model.log_prob_at(x, t), want, atol=1e-8), t
    assert torch.allclose(model.log_prob_at(x, model.cflow.T), model.log_prob(x), atol=1e-10)
    with pytest.raises(ValueError, match=r"t must be in \[0, T\]"):
        model.log_prob_at(x, model.cflow.T + 0.1)
