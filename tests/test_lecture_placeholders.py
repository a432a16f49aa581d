"""The lecture's placeholder coupling (chapter 9, erratum 4) behaves as its code does."""

import pytest
import torch

import nfcourse as nf
from nfcourse.book.lecture_placeholders import PlaceholderCoupling, placeholder_mlp_forward
from nfcourse.core.testing import autograd_logdet


def test_the_placeholder_network_returns_its_input():
    h = torch.randn(3, 4)
    assert placeholder_mlp_forward(h) is h


def test_its_forward_is_a_coupling_with_the_right_log_det_and_no_inverse():
    f = PlaceholderCoupling(4).double()
    z = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, logdet = f.forward(z)
    assert torch.equal(x[:, :2], z[:, :2])                          # x1 = z1
    assert torch.allclose(x[:, 2:], z[:, 2:] * z[:, :2].exp() + z[:, :2])   # s = t = z1
    brute, _ = autograd_logdet(lambda v: f.forward(v)[0], z)
    assert torch.allclose(logdet, brute, atol=1e-10)
    back, ld_inv = f.inverse(x)
    assert torch.equal(back, x) and torch.equal(ld_inv, torch.zeros(16, dtype=torch.float64))


def test_check_flow_catches_it_by_the_round_trip():
    with pytest.raises(AssertionError, match="round trip"):
        nf.check_flow(PlaceholderCoupling(2), torch.randn(8, 2))


def test_odd_or_tiny_dimensions_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="even"):
        PlaceholderCoupling(3)
