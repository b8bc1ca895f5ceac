"""What every benchmark writes: the machine it ran on, a JSON file and a PNG plot under
benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """The machine a figure was measured on, so a number is never read without its context."""
    import psutil
    import torch

    cpu_model, named, simd = platform.processor() or "", False, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                cpu_model, named = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not simd:
                # the vector units a CPU figure depends on (the kernels pick their path by these)
                simd = sorted(f for f in line.split(":", 1)[1].split()
                              if f in ("avx2", "fma", "f16c", "amx_tile") or f.startswith("avx512"))
            if named and simd:
                break
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model,
        "cpu_simd": simd,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def write_json(data: dict, path: str | Path | None, default_name: str) -> Path:
    out = Path(path) if path else RESULTS_DIR / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(out)
    return out


def bar_plot(groups: dict[str, dict[str, float]], title: str, ylabel: str, path: str | Path,
             fmt: str = "%.1f") -> Path:
    """groups: {group label: {series label: value}} drawn as grouped bars with the values printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted({s for g in groups.values() for s in g}, key=lambda s: (s != "native", s))
    n_groups, n_series = len(groups), max(len(series), 1)
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * n_groups * n_series / 2 + 3), 4))
    for i, s in enumerate(series):
        xs = [g + i * width for g in range(n_groups)]
        ys = [groups[label].get(s, 0.0) for label in groups]
        bars = ax.bar(xs, ys, width, label=s)
        ax.bar_label(bars, fmt=fmt, fontsize=8)
    ax.set_xticks([g + width * (n_series - 1) / 2 for g in range(n_groups)], list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
