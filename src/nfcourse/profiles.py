"""One switch for experiment size: the ``ci`` profile (CPU, small) or ``full`` (GPU, paper scale).

Set ``NFCOURSE_PROFILE`` to ``ci``, ``full`` or ``auto`` (the default). ``auto`` picks ``full``
when CUDA is available and ``ci`` otherwise. Chapters read their sizes through
:meth:`Profile.pick`, so the same cell runs at either scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
ENV_VAR = "NFCOURSE_PROFILE"
CHOICES = ("auto", "ci", "full")


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, the device it runs on, and why it was chosen."""

    name: str
    device: torch.device
    reason: str

    @property
    def is_full(self) -> bool:
        return self.name == "full"

    def pick(self, ci: T, full: T) -> T:
        """The value for this profile: ``profile.pick(ci=2_000, full=50_000)``."""
        return full if self.is_full else ci


def active_profile(env: dict[str, str] | None = None) -> Profile:
    """Read the profile from ``NFCOURSE_PROFILE`` and CUDA availability.

    Raises ``ValueError`` for an unknown value. ``full`` without CUDA is allowed (it will be
    slow) and the reason says so.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_VAR, "auto").strip().lower() or "auto"
    if raw not in CHOICES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a profile; use one of {', '.join(CHOICES)}.")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if raw == "auto":
        name = "full" if cuda else "ci"
        why = f"{ENV_VAR} unset or 'auto', CUDA {'available' if cuda else 'not available'}"
    else:
        name = raw
        why = f"{ENV_VAR}={raw}"
        if name == "full" and not cuda:
            why += " (no CUDA: the full profile will run on the CPU and take long)"
    return Profile(name=name, device=device, reason=why)
