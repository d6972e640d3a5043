#!/usr/bin/env python3
"""Python baseline for `atelier bench infer`: time a TorchScript style model.

    python models/bench_python.py --model FILE --threads T --mode forward|pipeline \\
        --batch B --size S --images N --warmup W [--inputs DIR]

Modes:

- ``forward``: the model alone, ceil(N/B) calls after W warm-up calls;
  latency is per batch. With ``--inputs DIR`` the batches are those JPEGs,
  decoded before timing, and each timed call converts uint8 RGB to float,
  runs the model and converts back to uint8, exactly as the Rust engine's
  call does (the model's speed can depend on the pixels, so both sides run
  the same ones). Without it: fixed-seed random float tensors.
- ``flops``: no timing; the floating-point operations of one forward pass
  of one S×S image, counted by ``torch.utils.flop_counter`` (the last line
  is ``{"mode": "flops", "size", "gflop", "torch"}``).
- ``pipeline``: JPEG files from ``--inputs DIR`` (all S×S; reused in a cycle
  when there are fewer than N). The file bytes are read into memory before
  timing; per batch of B the timed work is PIL decode → float tensor →
  forward → clamp/round to uint8 → PIL JPEG encode (quality 90) into memory.
  Every image's latency is its batch's duration (batch start to batch end).

The last line on stdout is one JSON object:
{"mode", "threads", "batch", "size", "images", "seconds", "images_per_s",
"p50_ms", "p99_ms", "torch"}; ``images`` counts the images actually timed
(a whole number of batches). Progress and errors go to stderr.
"""

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

JPEG_QUALITY = 90
INPUT_SEED = 1234


def log(msg: str) -> None:
    print(f"bench_python: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending, non-empty list."""
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def bench_forward(model: torch.jit.ScriptModule, args: argparse.Namespace) -> tuple[float, list[float]]:
    """Time forward calls: (wall seconds, per-batch latencies)."""
    if args.inputs is not None:
        images = []
        for blob in load_jpegs(args.inputs, args.size):
            with Image.open(io.BytesIO(blob)) as img:
                images.append(np.asarray(img.convert("RGB")))
        # Batches of B consecutive images (cycling), decoded before timing.
        pool_u8 = [
            np.stack([images[(i * args.batch + j) % len(images)] for j in range(args.batch)])
            for i in range(max(1, len(images) // args.batch))
        ]

        def call(i: int) -> None:
            batch = torch.from_numpy(pool_u8[i % len(pool_u8)]).permute(0, 3, 1, 2).to(torch.float32)
            model(batch).clamp(0.0, 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    else:
        gen = torch.Generator().manual_seed(INPUT_SEED)
        # A few distinct batches, made before timing so generation is not measured.
        pool = [torch.rand(args.batch, 3, args.size, args.size, generator=gen) * 255.0 for _ in range(4)]

        def call(i: int) -> None:
            model(pool[i % len(pool)])

    for i in range(args.warmup):
        call(i)
    calls = math.ceil(args.images / args.batch)
    latencies: list[float] = []
    begin = time.perf_counter()
    for i in range(calls):
        start = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - start)
    return time.perf_counter() - begin, latencies


def load_jpegs(directory: Path, size: int) -> list[bytes]:
    """Read every *.jpg / *.jpeg file in the directory (sorted by name)."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"bench_python: no .jpg files in {directory}")
    blobs = [p.read_bytes() for p in files]
    for path, blob in zip(files, blobs, strict=True):
        with Image.open(io.BytesIO(blob)) as img:  # reads the header only
            if img.size != (size, size):
                raise SystemExit(f"bench_python: {path} is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
    return blobs


def run_batch(model: torch.jit.ScriptModule, blobs: Sequence[bytes]) -> list[bytes]:
    """Decode, stack, run, convert to uint8 and JPEG-encode one batch."""
    arrays = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32)
    out = model(batch)
    pixels = out.clamp(0.0, 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    encoded = []
    for item in pixels:
        buf = io.BytesIO()
        Image.fromarray(item).save(buf, format="JPEG", quality=JPEG_QUALITY)
        encoded.append(buf.getvalue())
    return encoded


def bench_pipeline(model: torch.jit.ScriptModule, args: argparse.Namespace) -> tuple[float, list[float]]:
    """Time decode→forward→encode per batch: (wall seconds, per-image latencies)."""
    if args.inputs is None:
        raise SystemExit("bench_python: --mode pipeline needs --inputs DIR")
    blobs = load_jpegs(args.inputs, args.size)

    def batch_at(index: int) -> list[bytes]:
        return [blobs[(index * args.batch + j) % len(blobs)] for j in range(args.batch)]

    for i in range(args.warmup):
        run_batch(model, batch_at(i))
    calls = math.ceil(args.images / args.batch)
    latencies: list[float] = []
    begin = time.perf_counter()
    for i in range(calls):
        start = time.perf_counter()
        run_batch(model, batch_at(i))
        latencies.extend([time.perf_counter() - start] * args.batch)
    return time.perf_counter() - begin, latencies


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Python baseline for atelier's inference benchmark.")
    parser.add_argument("--model", type=Path, required=True, help="TorchScript file")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--mode", choices=("forward", "pipeline", "flops"), required=True)
    parser.add_argument("--batch", type=int, required=True, help="images per forward call")
    parser.add_argument("--size", type=int, required=True, help="image side S (S×S)")
    parser.add_argument("--images", type=int, required=True, help="images to time (rounded up to whole batches)")
    parser.add_argument("--warmup", type=int, required=True, help="untimed batches first")
    parser.add_argument("--inputs", type=Path, help="directory of S×S JPEG files (pipeline mode)")
    parser.add_argument(
        "--grad-mode",
        choices=("inference", "no_grad"),
        default="inference",
        help="torch.inference_mode() (default) or torch.no_grad(), which is what tch offers",
    )
    args = parser.parse_args(argv)
    for name in ("threads", "batch", "size", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model = torch.jit.load(str(args.model), map_location="cpu")
    model.eval()
    log(f"{args.model} mode={args.mode} threads={args.threads} batch={args.batch} size={args.size}")

    if args.mode == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.rand(1, 3, args.size, args.size) * 255.0
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        gflop = counter.get_total_flops() / 1e9
        print(json.dumps({"mode": "flops", "size": args.size, "gflop": round(gflop, 3), "torch": torch.__version__}), flush=True)
        return 0

    # `seconds` covers the timed batches only, not loading or warm-up.
    grad_mode = torch.inference_mode() if args.grad_mode == "inference" else torch.no_grad()
    with grad_mode:
        if args.mode == "forward":
            seconds, latencies = bench_forward(model, args)
            images = len(latencies) * args.batch
        else:
            seconds, latencies = bench_pipeline(model, args)
            images = len(latencies)

    ordered = sorted(latencies)
    result = {
        "mode": args.mode,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "images": images,
        "seconds": round(seconds, 6),
        "images_per_s": round(images / seconds, 3) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000.0, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000.0, 3),
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
