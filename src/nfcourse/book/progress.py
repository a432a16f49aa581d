"""One line of progress per evaluation, for training runs shown on a page.

A tqdm bar redraws itself in place, which a static HTML page cannot show; a line per
held-out evaluation reads the same live (in a kernel) and in the published page.
"""

from __future__ import annotations

from collections.abc import Callable

from nfcourse.data.images import bits_per_dim
from nfcourse.training.engine import History


def print_bits_per_dim(pixels: int) -> Callable[[History], None]:
    """An ``on_eval`` callback for image runs: step, training seconds, held-out bits/dim."""
    def report(h: History) -> None:
        print(f"step {h.eval_steps[-1]:>6,}  {h.eval_wall_time[-1]:6.0f} s  held-out "
              f"{bits_per_dim(h.eval_loss[-1], pixels):.3f} bits/dim", flush=True)
    return report
