"""Cost of the LatentCRF layer against one UNet call of Stable Diffusion 1.5.

The splice pays off only if the CRF is cheap next to the denoiser it replaces: the
paper's plan (31 of 40 DDIM steps, CRF, last 2 of 50) makes 33 UNet calls and one CRF
call instead of 50 UNet calls. This script times, on the same machine and the same
batch,

- ``ec.LatentCRF(channels=4, cond_dim=768)`` with its defaults (5 unrolled iterations),
- one forward of a ``UNet2DConditionModel`` with the Stable Diffusion 1.5 architecture
  (its configuration is written out below; random weights, nothing is downloaded),

on a ``[2, 4, 64, 64]`` latent with 77 text tokens of width 768, and reports the ratio
(target: the CRF costs at most 2% of one UNet call) and the resulting saving of the plan.

    python benchmarks/crf_vs_unet.py                         # fp32, CPU, 2 threads
    python benchmarks/crf_vs_unet.py --device cuda --dtype float16
    python benchmarks/crf_vs_unet.py --tiny                  # seconds: a smoke run

Writes a JSON record and a bar chart to ``--out`` (default ``/tmp/energycrf-bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# Stable Diffusion 1.5 UNet (runwayml/stable-diffusion-v1-5, unet/config.json), 860M parameters.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=4,
)


def _peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


def _time(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run(args) -> dict:
    import energycrf as ec
    from diffusers import UNet2DConditionModel

    from energycrf.integrations.plan import SplicePlan

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    b, size, tokens, width = args.batch, args.size, args.tokens, args.cond_dim
    x = torch.randn(b, 4, size, size, device=device, dtype=dtype)
    c = torch.randn(b, tokens, width, device=device, dtype=dtype)
    t = torch.full((b,), 500, device=device, dtype=torch.long)

    crf = ec.LatentCRF(channels=4, cond_dim=width).to(device=device, dtype=dtype).eval()
    crf_params = sum(p.numel() for p in crf.parameters())
    with torch.no_grad():
        _time(lambda: crf(x, c), args.warmup, device)
        crf_times = _time(lambda: crf(x, c), args.crf_repeats, device)
    rss_after_crf = _peak_rss_gb()

    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**(TINY_UNET if args.tiny else SD15_UNET)).to(device=device, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    unet_params = sum(p.numel() for p in unet.parameters())
    with torch.no_grad():
        _time(lambda: unet(x, t, encoder_hidden_states=c), args.warmup, device)
        unet_times = _time(lambda: unet(x, t, encoder_hidden_states=c), args.unet_repeats, device)

    crf_s, unet_s = statistics.median(crf_times), statistics.median(unet_times)
    ratio = crf_s / unet_s
    plan = SplicePlan()
    record = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "torch": torch.__version__,
        "dtype": args.dtype,
        "batch": [b, 4, size, size],
        "tokens": [tokens, width],
        "crf": {"params": crf_params, "iterations": crf.num_iterations, "times_s": crf_times, "median_s": crf_s},
        "unet": {
            "config": "tiny" if args.tiny else "sd15",
            "params": unet_params,
            "build_s": build_s,
            "times_s": unet_times,
            "median_s": unet_s,
        },
        "peak_rss_gb": {"after_crf": rss_after_crf, "after_unet": _peak_rss_gb()},
        "ratio_crf_over_unet": ratio,
        "target_ratio": 0.02,
        "meets_target": ratio <= 0.02,
        "plan": {
            "plan": plan.to_dict(),
            "unet_calls": plan.unet_calls,
            "baseline_unet_calls": plan.baseline_unet_calls,
            "cost_in_unet_calls": plan.unet_calls + ratio,
            "saving": plan.saving(ratio),
            "saving_free_crf": plan.saving(0.0),
            "speedup": plan.baseline_unet_calls / (plan.unet_calls + ratio),
        },
    }
    return record


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u, r = record["unet"]["median_s"], record["crf"]["median_s"]
    p = record["plan"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    bars = ax1.bar(["UNet call", "LatentCRF"], [u, r], color=["#888", "#d62728"])
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per call (log scale)")
    for bar, v in zip(bars, [u, r]):
        ax1.annotate(f"{v:.3g} s", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
    ax1.set_title(f"one call, {record['dtype']} {record['machine']['device']}\nCRF / UNet = {100 * record['ratio_crf_over_unet']:.2f}%")
    base = p["baseline_unet_calls"] * u
    spliced = p["unet_calls"] * u + r
    ax2.bar(["50 DDIM steps", "31/40 + CRF + 2/50"], [base, spliced], color=["#888", "#1f77b4"])
    ax2.set_ylabel("seconds per image batch (denoising)")
    ax2.set_title(f"paper plan: saving {100 * p['saving']:.1f}% ({p['speedup']:.2f}x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--cond-dim", type=int, default=768)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--crf-repeats", type=int, default=5)
    ap.add_argument("--unet-repeats", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny UNet, 8x8 latent, 32-wide tokens (smoke run)")
    ap.add_argument("--out", default="/tmp/energycrf-bench")
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.cond_dim, args.tokens = 8, 32, 16
        args.crf_repeats, args.unet_repeats = 2, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = run(args)
    (out / "crf_vs_unet.json").write_text(json.dumps(record, indent=2))
    plot(record, out / "crf_vs_unet.png")
    c, u = record["crf"], record["unet"]
    print(f"machine: {record['machine']}")
    print(f"LatentCRF ({c['params']:,} params, {c['iterations']} iterations): median {c['median_s'] * 1e3:.1f} ms of {c['times_s']}")
    print(f"UNet {u['config']} ({u['params']:,} params): median {u['median_s']:.3f} s of {u['times_s']}")
    print(f"ratio CRF / UNet call: {100 * record['ratio_crf_over_unet']:.2f}% (target <= 2%)")
    p = record["plan"]
    print(
        f"paper plan: {p['unet_calls']} UNet calls + 1 CRF = {p['cost_in_unet_calls']:.3f} UNet-call equivalents "
        f"vs {p['baseline_unet_calls']}: saving {100 * p['saving']:.2f}% (free CRF: {100 * p['saving_free_crf']:.1f}%), "
        f"speed-up {p['speedup']:.3f}x"
    )
    print(f"peak RSS: {record['peak_rss_gb']}")
    print(f"wrote {out / 'crf_vs_unet.json'} and {out / 'crf_vs_unet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
