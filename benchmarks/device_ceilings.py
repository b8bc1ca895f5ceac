"""The two ceilings of a GPU, measured on the spot rather than read off a datasheet: device-to-device
copy bandwidth (bytes read plus bytes written) and bf16 matmul throughput on random data."""

from __future__ import annotations

import statistics


def _time_ms(fn, repeats: int) -> float:
    """Median of `repeats` event-timed calls after warm-up calls."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbps(num_bytes: int = 2 << 30, repeats: int = 20) -> float:
    """GB/s of a large device-to-device copy, counting the bytes read and the bytes written."""
    import torch

    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), repeats)
    return 2 * num_bytes / (ms * 1e-3) / 1e9


def matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of an n x n x n bf16 matrix product on random inputs (2 n^3 flops)."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    c = torch.empty(n, n, dtype=torch.bfloat16, device="cuda")
    ms = _time_ms(lambda: torch.matmul(a, b, out=c), repeats)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12
