"""Two-sided checks for the chapters' check cells.

A chapter's check compares a measured number against the references shown on the same page:
the trivial baseline it must beat, and a floor below which the result is too good to be true
(an entropy, a closed form, the literature's best). ::

    check("held-out bits/dim", held_bits,
          above=("entropy - 3 s.e.", H - 3 * se), below=("independent pixels", independent_bits),
          better="lower")

A bound is either a plain number or a ``(label, value)`` pair; the label is what the failure
message names. A failed check raises :class:`CheckFailed` (an ``AssertionError``, so a check
cell fails the way an ``assert`` would), naming the quantity, its value, the violated bound with
its label and which way it failed. A call that bounds nothing, a non-finite value or bound, and
contradictory bounds are programming errors (``ValueError``/``TypeError``), not failed checks.
"""

from __future__ import annotations

import math
from typing import Literal, SupportsFloat, Union

Bound = Union[float, tuple[str, float]]
Better = Literal["lower", "higher"]

__all__ = ["CheckFailed", "check", "check_close", "versus"]


class CheckFailed(AssertionError):
    """A measured number lies outside the bounds its page sets for it."""


def _number(name: str, x: object) -> float:
    if isinstance(x, (bool, str, bytes)):
        raise TypeError(f"{name} is a {type(x).__name__} ({x!r}); a check compares numbers")
    try:
        v = float(x)  # type: ignore[arg-type]  # ints, numpy and 0-d torch scalars
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} is not a number: {x!r}") from err
    if not math.isfinite(v):
        raise ValueError(f"{name} is not finite ({v}): a diverged or empty measurement "
                         "cannot be checked against a bound")
    return v


def _bound(what: str, side: str, b: Bound) -> tuple[str, float]:
    if isinstance(b, tuple):
        if len(b) != 2 or not isinstance(b[0], str):
            raise TypeError(f"the {side} bound of {what!r} must be a number or (label, value), "
                            f"not {b!r}")
        return b[0], _number(f"the {side} bound {b[0]!r} of {what!r}", b[1])
    v = _number(f"the {side} bound of {what!r}", b)
    return f"{v:.6g}", v


def check(what: str, value: SupportsFloat, *, above: Bound | None = None,
          below: Bound | None = None, better: Better | None = None) -> None:
    """Check ``above < value < below`` (strictly), naming the bound that fails.

    Args:
        what: the quantity, as the page names it ("held-out bits/dim").
        value: the measured number (float, int, numpy or 0-d torch scalar).
        above: the value must exceed this bound: a number or ``(label, reference value)``.
        below: the value must stay under this bound: a number or ``(label, reference value)``.
        better: ``"lower"`` (an NLL, a KL, a W2) or ``"higher"`` (an AUROC, a log-likelihood)
            when the quantity is a score: the failure message then says whether the result
            does not beat a baseline or is too good to be true.

    Raises:
        CheckFailed: the value violates a bound.
        ValueError: neither bound is given, the value or a bound is not finite, or
            ``above >= below`` (no value could pass).
        TypeError: the value or a bound is not a number.
    """
    if above is None and below is None:
        raise ValueError(f"check({what!r}) has neither an 'above' nor a 'below' bound: "
                         "a check that bounds nothing is not a check")
    if better not in (None, "lower", "higher"):
        raise ValueError(f"better must be 'lower', 'higher' or None, not {better!r}")
    v = _number(f"{what!r}", value)
    lo = _bound(what, "above", above) if above is not None else None
    hi = _bound(what, "below", below) if below is not None else None
    if lo is not None and hi is not None and lo[1] >= hi[1]:
        raise ValueError(f"check({what!r}): the lower bound {lo[0]!r} = {lo[1]:.6g} is not below "
                         f"the upper bound {hi[0]!r} = {hi[1]:.6g}; no value could pass")
    if lo is not None and not v > lo[1]:
        _fail(what, v, lo, "below", better)
    if hi is not None and not v < hi[1]:
        _fail(what, v, hi, "above", better)


def _fail(what: str, v: float, bound: tuple[str, float], side: str, better: Better | None) -> None:
    label, ref = bound
    head = f"{what} = {v:.6g}"
    at = f"{label!r} = {ref:.6g}"
    # ``side`` is where the value lies relative to the violated bound.
    if better is None:
        raise CheckFailed(f"{head} is not {'above' if side == 'below' else 'below'} {at}")
    too_good = (side == "below") == (better == "lower")
    if too_good:
        raise CheckFailed(f"{head} is {side} {at}: too good to be true")
    raise CheckFailed(f"{head} does not beat {at}")


def check_close(what: str, value: SupportsFloat, reference: SupportsFloat, tol: float,
                label: str = "reference") -> None:
    """Check ``|value - reference| < tol`` against a closed form or an exact value.

    Raises:
        CheckFailed: the value is ``tol`` or further from the reference.
        ValueError: ``tol`` is not positive, or a number is not finite.
    """
    v = _number(f"{what!r}", value)
    ref = _number(f"the reference {label!r} of {what!r}", reference)
    t = _number(f"the tolerance of {what!r}", tol)
    if t <= 0:
        raise ValueError(f"check_close({what!r}): the tolerance must be positive, not {t}")
    if not abs(v - ref) < t:
        raise CheckFailed(f"{what} = {v:.6g} is {abs(v - ref):.3g} from {label!r} = {ref:.6g} "
                          f"(tolerance {t:.3g}), {'above' if v > ref else 'below'} it")


def versus(value: SupportsFloat, se: SupportsFloat, reference: SupportsFloat, *,
           unit: str = "bits/dim", better: Better = "lower", ties_within: float = 2.0) -> str:
    """A verdict for the prose, computed from the numbers: how ``value ± se`` compares with
    ``reference``. A difference within ``ties_within`` standard errors is a tie.

    Returns a phrase that follows a subject, e.g. "beats them by 0.120 ± 0.010 bits/dim" or
    "is level with them (a difference of +0.004 ± 0.010 bits/dim)".
    """
    v, s, r = _number("value", value), _number("se", se), _number("reference", reference)
    if s < 0 or ties_within < 0:
        raise ValueError(f"versus: se and ties_within must be >= 0, got {s} and {ties_within}")
    if better not in ("lower", "higher"):
        raise ValueError(f"versus: better must be 'lower' or 'higher', got {better!r}")
    gap = v - r
    if abs(gap) <= ties_within * s:
        return f"is level with them (a difference of {gap:+.3f} ± {s:.3f} {unit})"
    wins = gap < 0 if better == "lower" else gap > 0
    return f"{'beats' if wins else 'loses to'} them by {abs(gap):.3f} ± {s:.3f} {unit}"
