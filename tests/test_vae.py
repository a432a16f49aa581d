"""Tests of nfcourse.vae: the bounds against a linear-Gaussian VAE whose log p(x) is exact."""

import math

import pytest
import torch

from nfcourse.training.engine import TrainConfig, fit
from nfcourse.vae import VAE, ELBOObjective, bound_curve

D, L = 3, 2


def linear_vae(exact_posterior: bool) -> tuple[VAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear-Gaussian VAE (depth 0) in float64: x = W z + b + noise, noise ~ N(0, s^2 I).

    W has orthogonal columns, so the true posterior p(z | x) is Gaussian with a *diagonal*
    covariance and the encoder can represent it exactly. Returns (vae, W, b, s^2).
    """
    vae = VAE(D, L, hidden=8, depth=0).double()
    W = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    W = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64))[0] @ W       # rotate, keep W^T W
    b = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    s2 = 0.3**2
    raw_s2 = vae.log_var_bound * math.atanh(math.log(s2) / vae.log_var_bound)
    dec = vae.decoder[0]
    post_var = 1.0 / (1.0 + torch.diagonal(W.T @ W) / s2)               # diag since W^T W is
    with torch.no_grad():
        dec.weight.zero_()
        dec.bias.zero_()
        dec.weight[:D] = W
        dec.bias[:D] = b
        dec.bias[D:] = raw_s2
        enc = vae.encoder[0]
        enc.weight.zero_()
        enc.bias.zero_()
        # posterior mean = post_var * W^T (x - b) / s2
        A = post_var[:, None] * W.T / s2
        enc.weight[:L] = A
        enc.bias[:L] = -A @ b
        lv = torch.log(post_var)
        if not exact_posterior:  # a worse proposal: shifted and too narrow
            enc.bias[:L] += 0.3
            lv = lv - 0.7
        enc.bias[L:] = vae.log_var_bound * torch.atanh(lv / vae.log_var_bound)
    return vae, W, b, torch.tensor(s2, dtype=torch.float64)


def exact_log_p(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, s2: torch.Tensor
                ) -> torch.Tensor:
    cov = W @ W.T + s2 * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def sample_linear(n: int, W: torch.Tensor, b: torch.Tensor, s2: torch.Tensor,
                  seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, generator=g, dtype=torch.float64)
    return z @ W.T + b + s2.sqrt() * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_exact_posterior_gives_exact_log_p_for_every_k_and_chunking() -> None:
    vae, W, b, s2 = linear_vae(exact_posterior=True)
    x = sample_linear(50, W, b, s2)
    truth = exact_log_p(x, W, b, s2)
    g = torch.Generator().manual_seed(0)
    # with q = p(z | x) every importance weight equals p(x)
    assert torch.allclose(vae.log_weights(x, 7, g), truth[:, None].expand(50, 7), atol=1e-10)
    for k, max_elements in [(1, 1 << 20), (10, 3), (1000, 64), (1000, 1 << 20)]:
        assert torch.allclose(vae.iwae(x, k, g, max_elements=max_elements), truth, atol=1e-10)


def test_iwae_rises_with_k_and_stays_below_log_p() -> None:
    vae, W, b, s2 = linear_vae(exact_posterior=False)
    x = sample_linear(400, W, b, s2)
    truth = exact_log_p(x, W, b, s2)
    curve = bound_curve(vae, x, ks=(1, 10, 100, 1000), generator=torch.Generator().manual_seed(1),
                        max_elements=50_000)
    gaps = {k: (truth - curve.per_point[k]).mean().item() for k in curve.ks}
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > -1e-3   # a bound, tightening
    assert gaps[1] > 0.2 and gaps[1000] < 0.05                  # and it really tightens
    # the ELBO (closed-form KL) is the k = 1 bound
    elbo_gap = (truth - curve.elbo_per_point).mean().item()
    assert elbo_gap == pytest.approx(gaps[1], abs=0.05)


def test_iwae_1_equals_elbo_in_expectation() -> None:
    torch.manual_seed(0)
    vae = VAE(2, 2, hidden=16, depth=2).double()                 # random nonlinear VAE
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reps = 4000
    xr = x.repeat(reps, 1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        elbo = vae.elbo(xr, g).reshape(reps, 20)
    iwae1 = vae.iwae(xr, 1, g).reshape(reps, 20)
    diff = elbo.mean(0) - iwae1.mean(0)                            # per point
    se = torch.sqrt(elbo.var(0) / reps + iwae1.var(0) / reps)
    assert bool((diff.abs() < 4.5 * se + 1e-9).all()), (diff / se)
    # and the estimators are different (closed-form KL vs sampled log q): not a tautology
    assert not torch.allclose(elbo.var(0), iwae1.var(0))


def test_elbo_below_iwae_k_on_average() -> None:
    torch.manual_seed(1)
    vae = VAE(2, 2, hidden=16, depth=2).double()
    with torch.no_grad():  # larger random weights: a far-from-trivial posterior
        for p in vae.parameters():
            p.mul_(1.5)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # data from the model itself
        mean, log_var = vae.decode(torch.randn(1000, 2, generator=g, dtype=torch.float64))
        x = mean + torch.exp(0.5 * log_var) * torch.randn(1000, 2, generator=g,
                                                          dtype=torch.float64)
        x = x.repeat(8, 1)  # several draws per point
        elbo = vae.elbo(x, g)
    for k in (2, 5, 50, 500):
        diff = vae.iwae(x, k, g) - elbo                           # paired over the same points
        assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff)), (k, diff.mean())


def test_bound_curve_agrees_with_iwae() -> None:
    vae, W, b, s2 = linear_vae(exact_posterior=False)
    x = sample_linear(300, W, b, s2, seed=2).repeat(20, 1)
    c = bound_curve(vae, x, ks=(1, 20), generator=torch.Generator().manual_seed(2))
    direct = vae.iwae(x, 20, torch.Generator().manual_seed(3))
    diff = c.per_point[20] - direct                               # same points, paired
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(len(diff))
    assert c.ks == (1, 20) and c.per_point[20].shape == (6000,)


def test_fit_trains_a_vae_through_the_elbo_objective() -> None:
    torch.manual_seed(0)
    vae = VAE(2, 1, hidden=32, depth=2)
    target = torch.distributions.MultivariateNormal(
        torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.9], [0.9, 1.0]]))

    def sampler(n: int, g: torch.Generator) -> torch.Tensor:
        return target.mean + torch.randn(n, 2, generator=g) @ target.scale_tril.T

    x = sampler(2000, torch.Generator().manual_seed(9))
    before = vae.iwae(x, 50).mean().item()
    objective = ELBOObjective(vae, kl_warmup=50)
    fit(objective, sampler, TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup=20,
                                        eval_every=100, eval_size=1000), progress=False)
    vae.eval()
    after = vae.iwae(x, 50).mean().item()
    assert objective.calls == 300
    assert after > before + 0.5
    assert after < target.log_prob(x).mean().item() + 0.05


@pytest.mark.parametrize("k", [0, -3, 1.5, True, "10"])
def test_bad_k_raises(k: object) -> None:
    vae = VAE(2, 1, 8, 1)
    with pytest.raises(ValueError, match="positive int"):
        vae.iwae(torch.zeros(3, 2), k)  # type: ignore[arg-type]


def test_bad_inputs_raise_clear_errors() -> None:
    vae = VAE(2, 1, 8, 1)
    with pytest.raises(ValueError, match=r"expected shape \[B, 2\]"):
        vae.elbo(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        vae.iwae(torch.tensor([[0.0, float("nan")]]), 5)
    with pytest.raises(TypeError, match="dtype"):
        vae.elbo(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="latent must be a positive int"):
        VAE(2, 0)
    with pytest.raises(ValueError, match="depth"):
        VAE(2, 1, depth=-1)
    with pytest.raises(ValueError, match="kl_warmup"):
        ELBOObjective(vae, kl_warmup=-1)
    with pytest.raises(ValueError, match="ks is empty"):
        bound_curve(vae, torch.zeros(3, 2), ks=())
    with pytest.raises(ValueError, match="max_elements"):
        vae.iwae(torch.zeros(3, 2), 5, max_elements=0)


def test_grid_log_prob_matches_the_linear_gaussian_closed_form() -> None:
    from nfcourse.vae import grid_log_prob
    vae, W, b, s2 = linear_vae(exact_posterior=False)    # the encoder plays no part
    x = sample_linear(200, W, b, s2, seed=3)
    truth = exact_log_p(x, W, b, s2)
    assert torch.allclose(grid_log_prob(vae, x, nodes=200, rows=7), truth, atol=1e-8)
    coarse = grid_log_prob(vae, x, nodes=6)               # too coarse: visibly wrong
    assert (coarse - truth).abs().max() > 1e-3
    with pytest.raises(ValueError, match="latent must be 2"):
        grid_log_prob(VAE(D, 3, hidden=8, depth=0), x.float())
    with pytest.raises(ValueError, match="nodes"):
        grid_log_prob(vae, x, nodes=1)
