"""What every chapter does first: reproducibility settings and a banner naming the profile."""

from __future__ import annotations

import datetime as _dt
import os
import platform

import torch

from nfcourse.core.allocator import keep_freed_memory
from nfcourse.core.seeding import seed_everything
from nfcourse.profiles import Profile, active_profile

__all__ = ["setup", "show_banner", "banner", "seed_everything"]



def setup(seed: int = 0, threads: int = 2) -> Profile:
    """Seed everything, fix the CPU thread count and plot style, return the active profile.

    Two threads is what the CI machine has; a fixed count keeps CPU results reproducible.
    Freed memory is kept in the process (:func:`nfcourse.core.allocator.keep_freed_memory`),
    which changes no result, only speed.
    """
    seed_everything(seed)
    torch.set_num_threads(threads)
    keep_freed_memory()  # large temporaries reuse freed memory instead of page-faulting
    os.environ.setdefault("TQDM_DISABLE", "1" if os.environ.get("CI") else "0")
    import matplotlib

    _show_figures_inline()
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (6, 4),
                                "axes.grid": True, "grid.alpha": 0.3})
    return active_profile()


def _show_figures_inline() -> None:
    """In a Jupyter kernel, make sure figures are displayed (stored in the notebook).

    A kernel started with ``MPLBACKEND=Agg`` in its environment (a Makefile, a CI runner, a
    user's shell profile) draws every figure off-screen and displays none: the executed record
    then has no images at all. Outside a kernel (scripts, tests) the backend is left alone.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is not needed to use the library
        return
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return
    import matplotlib

    if "inline" not in matplotlib.get_backend():
        shell.run_line_magic("matplotlib", "inline")


def banner(profile: Profile) -> str:
    """One line, for the top of a page: which profile, device and versions produced it."""
    import nfcourse

    threads = torch.get_num_threads()
    device = (torch.cuda.get_device_name(0) if profile.device.type == "cuda"
              else f"CPU ({platform.machine()}, {threads} thread{'s' if threads != 1 else ''})")
    date = _dt.date.today().isoformat()
    return (f"Executed with profile **{profile.name}** ({profile.reason}) on {device}, "
            f"{date}; nfcourse {nfcourse.__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}.")


def show_banner(profile: Profile) -> None:
    """Display :func:`banner` as a note in the notebook (Markdown output)."""
    from IPython.display import Markdown, display

    display(Markdown(f"> **Profile.** {banner(profile)}"))
