"""Hand-written ODE solvers: convergence orders against analytic solutions, and the interface."""

import math

import pytest
import torch
from scipy.integrate import quad

from nfcourse.ode.solvers import (FIXED_ORDERS, FIXED_STAGES, SolverSpec, convergence_order,
                                  fixed_step_solve, solve)


def _field(t, y):
    # dy/dt = cos(t) y, y(0) = 1  =>  y(t) = exp(sin t): time-dependent, so a solver that
    # evaluates t at the wrong stage loses its order
    return torch.cos(t) * y


def _exact(t):
    return math.exp(math.sin(t))


# Step counts where each method's error is well above float64 round-off.
STEPS = {"euler": [16, 32, 64, 128], "midpoint": [16, 32, 64, 128],
         "heun": [16, 32, 64, 128], "rk4": [4, 8, 16, 32]}


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_convergence_order(method):
    y0 = torch.ones(3, dtype=torch.float64)
    errors = [abs(float(fixed_step_solve(_field, y0, 0.0, 2.0, n, method)[0]) - _exact(2.0))
              for n in STEPS[method]]
    order = convergence_order(STEPS[method], errors)
    assert abs(order - FIXED_ORDERS[method]) < 0.15, (method, order, errors)


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_backwards_in_time_and_tuple_state(method):
    # integrate 0 -> 1.5 and back; the tuple state carries y and q = int y^2 dt
    def f(t, state):
        y, _ = state
        return _field(t, y), y.square()

    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    steps = 400 if FIXED_ORDERS[method] == 1 else 100
    y1, q1 = fixed_step_solve(f, (y0, torch.zeros(2, dtype=torch.float64)), 0.0, 1.5, steps,
                              method)
    assert torch.allclose(y1, y0 * _exact(1.5), rtol=1e-2)
    q_exact = quad(lambda t: math.exp(2 * math.sin(t)), 0.0, 1.5)[0] * y0.square()
    assert torch.allclose(q1, q_exact, rtol=1e-2)
    y_back, _ = fixed_step_solve(f, (y1, q1), 1.5, 0.0, steps, method)
    assert torch.allclose(y_back, y0, rtol=1e-2)


@pytest.mark.parametrize("method", sorted(FIXED_STAGES))
def test_function_evaluations_are_steps_times_stages(method):
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    solve(f, torch.ones(1), 0.0, 1.0, SolverSpec(method, steps=5))
    assert len(calls) == 5 * FIXED_STAGES[method]
    assert min(calls) == 0.0 and max(calls) <= 1.0


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_torchdiffeq_fixed_grid_has_the_same_order(method):
    # the backend switch changes the implementation, not the accuracy class
    y0 = torch.ones(1, dtype=torch.float64)
    # its 3/8-rule RK4 reaches the asymptotic regime a little later than the classic one
    steps = [32, 64, 128, 256] if method == "rk4" else STEPS[method]
    errors = [abs(float(solve(_field, y0, 0.0, 2.0, SolverSpec(method, steps=n,
                                                                   backend="torchdiffeq"))[0])
                  - _exact(2.0)) for n in steps]
    assert abs(convergence_order(steps, errors) - FIXED_ORDERS[method]) < 0.15


@pytest.mark.parametrize("adjoint", [False, True])
def test_dopri5_meets_its_tolerance(adjoint):
    field = torch.nn.Linear(1, 1, bias=False).double()  # a module, so the adjoint can run
    with torch.no_grad():
        field.weight.fill_(-0.7)
    y0 = torch.ones(4, 1, dtype=torch.float64)
    spec = SolverSpec("dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
    y1 = solve(lambda t, y: field(y), y0, 0.0, 2.0, spec, adjoint_params=())
    assert torch.allclose(y1, y0 * math.exp(-1.4), rtol=1e-7, atol=0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown method"):
        SolverSpec("rk45")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        SolverSpec("rk4", steps=0)
    with pytest.raises(ValueError, match="rtol must be"):
        SolverSpec("dopri5", rtol=float("nan"))
    with pytest.raises(ValueError, match="backend='torchdiffeq'"):
        SolverSpec("rk4", adjoint=True)
    with pytest.raises(ValueError, match="backend must be"):
        SolverSpec("rk4", backend="scipy")
    with pytest.raises(TypeError, match="nn.Module"):
        solve(lambda t, y: -y, torch.ones(1), 0.0, 1.0, SolverSpec("dopri5", adjoint=True))
    with pytest.raises(TypeError, match="tensor or a non-empty tuple"):
        solve(lambda t, y: -y, [1.0], 0.0, 1.0, SolverSpec("rk4"))
    with pytest.raises(ValueError, match="finite"):
        solve(lambda t, y: -y, torch.ones(1), 0.0, math.inf)
    with pytest.raises(ValueError, match="round-off"):
        convergence_order([1, 2], [1e-3, 0.0])


# ------------------------------------------------------------- against torchdiffeq


def _pendulum(t, state):
    # a nonlinear, time-dependent system with no closed form: a driven, damped pendulum
    theta, omega = state
    return omega, -torch.sin(theta) - 0.3 * omega + 0.5 * torch.cos(1.7 * t)


def _pendulum_start():
    return (torch.tensor([0.4, -1.1, 2.0], dtype=torch.float64),
            torch.tensor([0.0, 0.8, -0.5], dtype=torch.float64))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
def test_same_steps_as_torchdiffeq_fixed_grid(method):
    # torchdiffeq implements the same one-step formulas ("heun" is its "heun2"): run on the
    # same grid, both must give the same numbers up to round-off, forwards and backwards
    for t0, t1 in ((0.0, 3.0), (3.0, 0.5)):
        ours = solve(_pendulum, _pendulum_start(), t0, t1, SolverSpec(method, steps=37))
        theirs = solve(_pendulum, _pendulum_start(), t0, t1,
                       SolverSpec(method, steps=37, backend="torchdiffeq"))
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), (method, t0, t1, a, b)


def test_rk4_step_is_torchdiffeqs_classic_rk4_step():
    # torchdiffeq's "rk4" method is the 3/8-rule variant; its classic RK4 step function is
    # the same formula as ours, so one step must agree to round-off
    from torchdiffeq._impl.rk_common import rk4_step_func

    y0 = torch.stack(_pendulum_start())
    t0, h = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)

    def f(t, y, perturb=None):
        return torch.stack(_pendulum(t, tuple(y)))

    theirs = y0 + rk4_step_func(f, t0, h, t0 + h, y0)
    ours = torch.stack(fixed_step_solve(_pendulum, tuple(y0), 0.3, 0.55, 1, "rk4"))
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_converges_to_torchdiffeq_dopri5_at_the_right_order(method):
    # no closed form here: the reference is torchdiffeq's adaptive dopri5 at 1e-12
    ref = solve(_pendulum, _pendulum_start(), 0.0, 3.0,
                SolverSpec("dopri5", rtol=1e-12, atol=1e-12))
    steps = [8, 16, 32, 64] if method == "rk4" else [32, 64, 128, 256]
    errors = []
    for n in steps:
        y = solve(_pendulum, _pendulum_start(), 0.0, 3.0, SolverSpec(method, steps=n))
        errors.append(max(float((a - b).abs().max()) for a, b in zip(y, ref)))
    assert errors[-1] < {1: 3e-2, 2: 1e-4, 4: 1e-6}[FIXED_ORDERS[method]]
    order = convergence_order(steps, errors)
    assert abs(order - FIXED_ORDERS[method]) < 0.2, (method, order, errors)
