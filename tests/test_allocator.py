"""keep_freed_memory: freed large blocks are reused instead of being faulted in again."""

import pytest
import torch

from nfcourse.core import allocator


def _faults_per_call(fn, calls: int = 5) -> float:
    fn()
    before = allocator.minor_faults()
    for _ in range(calls):
        fn()
    return (allocator.minor_faults() - before) / calls


def _temporaries() -> None:
    # the pattern of a wide layer: several 2.5 MiB temporaries alive at once, freed in turn
    with torch.no_grad():
        x = torch.randn(10_000, 64)
        for _ in range(4):
            y = torch.relu(x @ torch.eye(64))
            z = y * 2.0 + 1.0
            x = z - y
        del x, y, z


@pytest.mark.skipif(allocator._glibc() is None, reason="thresholds exist only in glibc")
def test_kept_memory_removes_the_page_faults_of_large_temporaries():
    try:
        assert allocator.glibc_defaults()
        faulting = _faults_per_call(_temporaries)
        assert allocator.keep_freed_memory()
        assert allocator.malloc_thresholds() == (64 << 20, 256 << 20)
        kept = _faults_per_call(_temporaries)
    finally:
        allocator.keep_freed_memory()
    # at glibc's starting thresholds each fresh 2.5 MiB block is ~640 faulted 4 KiB pages
    assert faulting > 1000
    assert kept < 0.05 * faulting


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="mmap_bytes <= trim_bytes"):
        allocator.set_malloc_thresholds(1 << 20, 1 << 10)
    with pytest.raises(ValueError, match="1 <= mmap_mib"):
        allocator.keep_freed_memory(0)
