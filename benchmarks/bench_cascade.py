"""Forward time and peak memory of the 3-level mlVIRNET cascade (a script, not a test).

Each configuration (device x precision) runs in a fresh subprocess so that its peak resident
memory (``ru_maxrss``) is its own. Reported per configuration: median and minimum wall time of
``--repeats`` forward passes after ``--warmup`` untimed ones (``net.eval()``,
``torch.inference_mode``), the median process CPU time per pass (all threads; on a shared machine
``cpu_s / threads`` is a better guess of the uncontended wall time than a contended wall time),
the increase of the peak RSS over the RSS after building the net and inputs, and on CUDA
``torch.cuda.max_memory_allocated``.

``--fuse`` folds every batch norm into its convolution first (:func:`fuse_batchnorm`, same
result as eval mode); ``--contiguous`` runs the U-Nets in the default memory layout instead of
their default ``channels_last_3d`` (to measure what that layout brings). ``--pytorch-conv`` lets
PyTorch choose the kernel of every 3x3x3 convolution (``nn.Conv3d``) instead of always running
oneDNN's (:class:`~MLVIRNETLib.networks.unet.Conv3d`, to measure what that brings). ``--symmetric`` runs the
cascade both ways in one batch and averages (``MultilevelNet.forward(symmetric=True)``, the
``network_symmetric`` option).

Example::

    python benchmarks/bench_cascade.py --size 160 --device cpu --threads 2 --repeats 3 --fuse
    python benchmarks/bench_cascade.py --size 96 --device cuda --precision float32,fp16 --repeats 20 --warmup 3
    python benchmarks/bench_cascade.py --size 96 --device cpu --threads 2 --repeats 5 --symmetric
    python benchmarks/bench_cascade.py --size 96 --device cpu --threads 2 --repeats 5 --pytorch-conv
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from MLVIRNETLib.core.devices import synchronize
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.networks.cascade import MultilevelNet, fuse_batchnorm, parameter_count
from MLVIRNETLib.networks.unet import Conv3d


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_one(
    size: int, device_name: str, precision: str, threads: int, repeats: int, warmup: int, channels_last: bool, fuse: bool,
    symmetric: bool = False, pytorch_conv: bool = False,
) -> dict:
    """Benchmark one configuration in this process; returns a dict of measurements."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = MultilevelNet(levels=3, features=16, depth=3, channels_last=channels_last).eval()
    if fuse:
        net = fuse_batchnorm(net)
    if pytorch_conv:
        for m in net.modules():
            if type(m) is Conv3d:
                m.__class__ = torch.nn.Conv3d  # the same parameters; PyTorch's kernel choice
    net = net.to(device)
    grid = ImageGrid((size, size, size), (1.75, 1.75, 2.0), (-140.0, -140.0, -160.0))
    g = torch.Generator().manual_seed(1)
    fixed = torch.rand(1, 1, size, size, size, generator=g).to(device)
    moving = torch.rand(1, 1, size, size, size, generator=g).to(device)
    use_autocast = precision in ("bf16", "fp16")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            out = net(fixed, moving, grid, symmetric=symmetric)
        synchronize(device)
        return out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _current_rss_mib()
    times, cpu_times = [], []
    for i in range(warmup + repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = forward()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            times.append(dt)
            cpu_times.append(dc)
        del out
    result = {
        "size": size,
        "device": device_name,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
        "fused_batchnorm": fuse,
        "symmetric": symmetric,
        "pytorch_conv": pytorch_conv,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": [round(t, 3) for t in times],
        "median_cpu_s": statistics.median(cpu_times),
        "peak_rss_increase_mib": round(_peak_rss_mib() - rss_before, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "parameters": parameter_count(net),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=160, help="cube edge in voxels (divisible by 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu plus cuda when available)")
    p.add_argument("--precision", default="float32",
                   help="comma list of float32, bf16 and fp16 (autocast; fp16 is what register() uses on CUDA); "
                        "default float32: bf16 is very slow on CPUs without AVX-512 bf16 (94.8 s against 1.08 s "
                        "at 64^3 on this project's CPU)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward passes first")
    p.add_argument("--contiguous", action="store_true", help="run the U-Nets in the default layout, not channels_last_3d")
    p.add_argument("--fuse", action="store_true", help="fold batch norms into the convolutions (inference copy)")
    p.add_argument("--symmetric", action="store_true", help="run the cascade both ways and average")
    p.add_argument("--pytorch-conv", action="store_true",
                   help="let PyTorch choose each 3x3x3 convolution's kernel (nn.Conv3d) instead of always oneDNN's")
    p.add_argument("--json", action="store_true", help="print one JSON line per configuration")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # internal: run in this process
    args = p.parse_args(argv)
    if args.size % 16 or args.size < 16:
        p.error(f"--size {args.size} must be a positive multiple of 16 (3 levels x depth-3 U-Nets)")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    if not precisions or any(s not in ("float32", "bf16", "fp16") for s in precisions):
        p.error(f"--precision entries must be float32, bf16 or fp16, got {args.precision!r}")

    if args.single:
        res = run_one(
            args.size, args.device, precisions[0], args.threads, args.repeats, args.warmup, not args.contiguous, args.fuse,
            args.symmetric, args.pytorch_conv,
        )
        print(json.dumps(res))
        return 0

    if args.device == "auto":
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = [args.device]
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"torch {torch.__version__}, CPU capability {capability}, load average {load} at start; "
        f"cascade 3 levels x UNet3D(features=16, depth=3); input {args.size}^3, batch 1; "
        f"fused BN {args.fuse}, channels_last_3d {not args.contiguous}, symmetric {args.symmetric}, "
        f"convolution kernels {'chosen by PyTorch' if args.pytorch_conv else 'oneDNN'}"
    )
    if "bf16" in precisions and "cpu" in devices and "AVX512" not in capability:
        print("note: this CPU has no AVX-512: bf16 3-D convolutions fall back to a slow reference kernel")
    for dev in devices:
        for prec in precisions:
            if dev == "cpu" and prec == "fp16":
                print("cpu   fp16: skipped (fp16 autocast is the CUDA path; on a CPU use bf16)")
                continue
            cmd = [
                sys.executable, __file__, "--single", "--size", str(args.size), "--device", dev,
                "--precision", prec, "--threads", str(args.threads), "--repeats", str(args.repeats),
                "--warmup", str(args.warmup),
            ]
            cmd += ["--contiguous"] if args.contiguous else []
            cmd += ["--fuse"] if args.fuse else []
            cmd += ["--symmetric"] if args.symmetric else []
            cmd += ["--pytorch-conv"] if args.pytorch_conv else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{dev} {prec}: failed:\n{proc.stderr.strip()[-2000:]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if args.json:
                print(json.dumps(res))
                continue
            line = (
                f"{dev:5s} {prec:8s} threads {res['threads']}: forward median {res['median_s']:.2f} s "
                f"(min {res['min_s']:.2f} s, runs {res['times_s']}), CPU time {res['median_cpu_s']:.2f} s, "
                f"peak RSS +{res['peak_rss_increase_mib']:.0f} MiB (total {res['peak_rss_mib']:.0f} MiB)"
            )
            if "cuda_max_allocated_mib" in res:
                line += f", CUDA max allocated {res['cuda_max_allocated_mib']:.0f} MiB on {res['gpu']}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
