"""Input checks shared by every public entry point.

A flow that receives a tensor of the wrong shape, dtype or device, or one holding NaN/inf,
raises at once with a message naming what was expected, what arrived, and how to fix it.
Checks run at the boundary of a public call (``Flow.forward``/``Flow.inverse`` called by the
user, ``FlowModel.log_prob`` ...); layers inside a composition are not re-checked.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Iterator, Sequence

import torch

_ENABLED = True


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Temporarily switch input validation on or off (off saves a device sync per call)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = previous


def validation_enabled() -> bool:
    return _ENABLED


def check_tensor(
    x: object,
    event_shape: Sequence[int] | None,
    *,
    name: str = "input",
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a batch ``[B, *event_shape]`` of finite floats on ``device``.

    ``event_shape=None`` accepts any shape with at least one (batch) dimension. ``dtype`` and
    ``device`` are those of the module's parameters; ``None`` skips that check.
    Returns ``x`` unchanged so the call can be used inline.
    """
    if not _ENABLED:
        return x  # type: ignore[return-value]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}. "
                        "Convert with torch.as_tensor(x, dtype=torch.float32).")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}. "
                        "Convert with x.float().")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the module's parameters), got {x.dtype}. "
                        f"Use x.to({dtype}) or module.to({x.dtype}).")
    if device is not None and x.device.type != device.type:
        raise ValueError(f"{name}: expected a tensor on device '{device}', got '{x.device}'. "
                         f"Use x.to('{device}') or move the module with .to('{x.device}').")
    if x.dim() < 1:
        raise ValueError(f"{name}: expected a batch of shape [B, ...], got a scalar.")
    if event_shape is not None:
        expected = tuple(event_shape)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{name}: expected shape [B, {', '.join(map(str, expected))}], "
                f"got {list(x.shape)}. The first dimension is the batch; a single sample "
                "needs x.unsqueeze(0).")
    if finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or inf). "
                         "Clean or drop those samples before calling the flow.")
    return x


def check_count(n: object, name: str = "n", what: str = "number of samples") -> int:
    """Require a count: a non-negative Python or NumPy/torch integer, not a bool or a float.

    Always checked (even with validation off): it costs nothing, and a float or string that
    reached torch would fail deep inside with a message about sizes instead of about ``n``.
    """
    if isinstance(n, bool) or (isinstance(n, torch.Tensor) and n.dtype == torch.bool):
        raise TypeError(f"{name}: expected an int ({what}), got the bool {n!r}; pass e.g. "
                        f"{name}=1000.")
    try:
        value = operator.index(n)  # accepts int, numpy and 0-d torch integers; refuses floats
    except TypeError:
        hint = (f" Pass int({n!r}) = {int(n)} instead." if isinstance(n, float)
                and n.is_integer() else "")
        raise TypeError(f"{name}: expected an int ({what}), got {type(n).__name__} {n!r}."
                        f"{hint}") from None
    if value < 0:
        raise ValueError(f"{name}: {what} must be >= 0, got {value}.")
    return value


def module_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of a module's first floating parameter or buffer, if it has one."""
    # lazily: the first floating tensor ends the walk (this runs at every validated call)
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return None, None
