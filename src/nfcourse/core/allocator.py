"""Keep freed CPU memory in the process, so large temporary tensors do not page-fault.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block larger than
its mmap threshold (128 KiB to start with) with a fresh ``mmap`` and returns it to the system
when it is freed, and it also trims the top of the heap back to the system once more than a
threshold is free there. The next tensor of that size then starts on pages the kernel has to
fault in and zero, one 4 KiB page at a time. A flow's forward pass on 10,000 points makes a
few ``[10000, 64]`` temporaries (2.5 MiB) per layer, and on this book's machines those faults
cost more than the arithmetic (the performance appendix counts them).

:func:`keep_freed_memory` raises both thresholds with ``mallopt`` (glibc's documented
interface, ``man 3 mallopt``), so freed blocks stay in
the process and are reused without faults. It is the in-process equivalent of starting Python
with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set. It changes no result,
only speed and the process's resident memory (freed memory is kept up to ``trim_mib``), and
it does nothing outside glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: tuple[int, int] | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl does not)
    except (OSError, AttributeError):
        return None
    return libc


#: glibc's documented starting values of both thresholds (128 KiB); glibc then adapts them,
#: which setting them explicitly switches off.
GLIBC_DEFAULT_BYTES = 128 * 1024


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes). Process-wide.

    Returns ``True`` if both are in effect, ``False`` where the C library is not glibc and
    nothing was changed.

    Raises:
        ValueError: if a threshold is not positive, or ``trim_bytes < mmap_bytes`` (a trim
            threshold below the largest heap block would hand such blocks straight back).
    """
    global _applied
    if mmap_bytes < 1 or trim_bytes < mmap_bytes:
        raise ValueError(f"set_malloc_thresholds: need 1 <= mmap_bytes <= trim_bytes, got "
                         f"mmap_bytes={mmap_bytes}, trim_bytes={trim_bytes}.")
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_bytes)) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_bytes)) == 1 and ok
    _applied = (int(mmap_bytes), int(trim_bytes)) if ok else None
    return ok


def keep_freed_memory(mmap_mib: int = 64, trim_mib: int = 256) -> bool:
    """Serve blocks below ``mmap_mib`` from the heap and keep up to ``trim_mib`` of freed heap.

    What :func:`nfcourse.book.setup` calls for every page. Returns ``True`` on glibc (the
    thresholds are in effect), ``False`` elsewhere (nothing changed).

    Raises:
        ValueError: unless ``1 <= mmap_mib <= trim_mib``.
    """
    if not 1 <= mmap_mib <= trim_mib:
        raise ValueError(f"keep_freed_memory: need 1 <= mmap_mib <= trim_mib, got mmap_mib="
                         f"{mmap_mib}, trim_mib={trim_mib}.")
    return set_malloc_thresholds(mmap_mib << 20, trim_mib << 20)


def glibc_defaults() -> bool:
    """Both thresholds back at 128 KiB, glibc's starting point: freed large blocks go back to
    the system again (to measure what :func:`keep_freed_memory` saves)."""
    return set_malloc_thresholds(GLIBC_DEFAULT_BYTES, GLIBC_DEFAULT_BYTES)


def malloc_thresholds() -> tuple[int, int] | None:
    """``(mmap_bytes, trim_bytes)`` last set here, or ``None`` (never set, or not glibc)."""
    return _applied


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``): pages the kernel had to map
    in, for example a fresh block from ``mmap``. A count, so unaffected by the machine's load."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
