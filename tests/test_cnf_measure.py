"""SavedTensorMeter counts what autograd keeps for backward; the adjoint keeps less."""

import pytest
import torch

from nfcourse.flows import CNF
from nfcourse.ode import SolverSpec
from nfcourse.book.measure import (SavedTensorMeter, compare_adjoint,
                                  measure_backward, time_sampling)


def test_meter_counts_saved_storages_once_and_releases_them():
    w = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = w
        for _ in range(5):
            y = torch.sin(y)      # sin saves its input: 5 new storages of 4000 bytes
        z = y * y                 # saves y twice, one storage
        assert meter.current == 6 * 4000
        z.sum().backward()
    assert meter.peak_bytes == 6 * 4000
    assert meter.current == 0     # the graph is freed after backward


def test_meter_leaves_gradients_unchanged_and_adjoint_holds_less():
    torch.manual_seed(0)
    model = CNF(2, hidden=16, layers=2, train_divergence="exact")
    torch.nn.init.normal_(model.cflow.field.out.weight, std=0.3)
    x = torch.randn(64, 2)
    model.cflow.train_solver = SolverSpec("rk4", steps=16, backend="torchdiffeq")
    model.nll(x).backward()           # double backward through the divergence, no meter
    plain = [p.grad.clone() for p in model.parameters()]
    cost = {}
    for adjoint in (False, True):
        model.zero_grad()
        model.cflow.train_solver = SolverSpec("rk4", steps=16, adjoint=adjoint,
                                              backend="torchdiffeq")
        cost[adjoint] = measure_backward(lambda: model.nll(x))
        if not adjoint:
            for p, g in zip(model.parameters(), plain):
                assert torch.equal(p.grad, g)
    # direct backprop keeps every step's graph; the adjoint keeps one function evaluation's
    assert cost[False].peak_mib > 5 * cost[True].peak_mib


def test_compare_adjoint_grows_direct_memory_only_and_restores_the_model():
    torch.manual_seed(0)
    model = CNF(2, hidden=16, layers=2, train_divergence="exact").eval()
    torch.nn.init.normal_(model.cflow.field.out.weight, std=0.3)
    before = (model.cflow.T, model.cflow.train_solver, list(model.cflow.nfe_history))
    rows = compare_adjoint(model, torch.randn(32, 2), [0.5, 2.0], steps_per_unit=4, repeats=1)
    assert [r.steps for r in rows] == [2, 8]
    for r in rows:
        assert r.direct_nfe == 4 * r.steps            # RK4: four evaluations per step
        assert r.adjoint_nfe == 2 * r.direct_nfe      # plus the backward solve's
        assert r.time_ratio > 0
    assert rows[1].direct.peak_mib > 3 * rows[0].direct.peak_mib
    assert rows[1].adjoint.peak_mib < 1.2 * rows[0].adjoint.peak_mib
    assert (model.cflow.T, model.cflow.train_solver, model.cflow.nfe_history) == before
    assert not model.training
    with pytest.raises(ValueError, match="lengths"):
        compare_adjoint(model, torch.randn(4, 2), [])
    with pytest.raises(ValueError, match="lengths"):
        compare_adjoint(model, torch.randn(4, 2), [1.0, -2.0])
    with pytest.raises(ValueError, match="steps_per_unit"):
        compare_adjoint(model, torch.randn(4, 2), [1.0], steps_per_unit=0)


def test_time_sampling_reports_the_solvers_nfe_and_restores_it():
    model = CNF(2, hidden=8, layers=1).eval()
    solver = model.cflow.eval_solver
    ms, nfe = time_sampling(model, SolverSpec("rk4", steps=3), n=10, repeats=2)
    assert nfe == 12 and ms > 0
    assert model.cflow.eval_solver is solver
    with pytest.raises(ValueError, match="repeats"):
        time_sampling(model, SolverSpec("rk4"), repeats=0)


def test_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        measure_backward(lambda: torch.zeros(()), repeats=0)


def test_probe_costs_one_vjp_is_one_field_evaluation_and_exact_is_d_of_them():
    from nfcourse.book.measure import probe_costs
    from nfcourse.nn import VelocityMLP
    torch.manual_seed(0)
    field = VelocityMLP(5, 16, 2, "tanh", frequencies=0, time_in_output=True)
    cost = probe_costs(field, torch.randn(32, 5), rounds=2, repeat=1)
    assert cost.dim == 5 and cost.field_flops > 0
    assert cost.vjp_flops == cost.field_flops            # products with the transposed weights
    assert cost.exact_flops == 5 * cost.vjp_flops        # one per dimension
    assert cost.vjp_seconds > 0 and cost.exact_seconds > 0 and cost.field_seconds > 0


def test_parameter_gradient_adjoint_agrees_with_direct_and_restores_the_model():
    from nfcourse.book.measure import parameter_gradient, reconstruction_error
    torch.manual_seed(0)
    model = CNF(2, hidden=16, layers=2, train_divergence="exact")
    torch.nn.init.normal_(model.cflow.field.out.weight, std=0.3)
    model.eval()
    x = torch.randn(32, 2)
    solver = model.cflow.train_solver
    fine = SolverSpec("rk4", steps=32, backend="torchdiffeq")
    direct = parameter_gradient(model, x, fine)
    adjoint = parameter_gradient(model, x, SolverSpec("rk4", steps=32, adjoint=True,
                                                      backend="torchdiffeq"))
    coarse = parameter_gradient(model, x, SolverSpec("rk4", steps=1, adjoint=True,
                                                     backend="torchdiffeq"))
    assert direct.shape == (sum(p.numel() for p in model.parameters()),)
    assert not model.training and model.cflow.train_solver is solver
    assert model.cflow.nfe_history == [] and all(p.grad is None for p in model.parameters())
    assert (adjoint - direct).norm() < 1e-4 * direct.norm()
    assert (coarse - direct).norm() > 10 * (adjoint - direct).norm()
    model.zero_grad()
    model.train()
    model.cflow.train_solver = fine
    model.nll(x).backward()
    manual = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(manual, direct, atol=1e-6)
    from nfcourse.book.measure import relative_difference
    assert relative_difference(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])) == 0.75
    assert reconstruction_error(model.cflow, x, fine) < 1e-4
    assert reconstruction_error(model.cflow, x, SolverSpec("euler", steps=2)) > 1e-3
