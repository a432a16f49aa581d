import pytest
import torch

from nfcourse.profiles import active_profile


def test_auto_follows_cuda() -> None:
    p = active_profile({})
    assert p.name == ("full" if torch.cuda.is_available() else "ci")


@pytest.mark.parametrize("value,name", [("ci", "ci"), ("FULL", "full"), (" ci ", "ci")])
def test_explicit_choice(value: str, name: str) -> None:
    p = active_profile({"NFCOURSE_PROFILE": value})
    assert p.name == name and p.pick(ci=1, full=2) == (2 if name == "full" else 1)


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a profile"):
        active_profile({"NFCOURSE_PROFILE": "huge"})


def test_full_without_cuda_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert "no CUDA" in active_profile({"NFCOURSE_PROFILE": "full"}).reason
