#!/usr/bin/env python3
"""Style one JPEG in a fresh process: the one-process-per-image baseline.

    python models/run_one.py --model FILE --input IN.jpg --output OUT.jpg [--threads T]

Imports torch, loads the TorchScript model, decodes the image with PIL, runs
it, encodes the result as JPEG (quality 90), writes it and exits. Nothing is
cached between runs: every call pays interpreter start, the torch import and
the model load, which is the cost a long-lived worker avoids.
Exits non-zero with a message on stderr on any failure.
"""

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

JPEG_QUALITY = 90


def style_image(model_path: Path, input_path: Path, output_path: Path, threads: int | None) -> None:
    """Load the model, style the image, write the JPEG."""
    import numpy as np
    import torch
    from PIL import Image

    if threads is not None:
        torch.set_num_threads(threads)
    model = torch.jit.load(str(model_path), map_location="cpu")
    model.eval()
    with Image.open(input_path) as img:
        pixels = np.array(img.convert("RGB"))  # a writable copy for torch
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    with torch.inference_mode():
        y = model(x)
    if tuple(y.shape) != tuple(x.shape):
        raise RuntimeError(f"model returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
    out = y[0].clamp(0.0, 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=JPEG_QUALITY)
    output_path.write_bytes(buf.getvalue())


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="Style one JPEG with a TorchScript model in a fresh process.")
    parser.add_argument("--model", type=Path, required=True, help="TorchScript file")
    parser.add_argument("--input", type=Path, required=True, help="input JPEG (any image PIL reads)")
    parser.add_argument("--output", type=Path, required=True, help="output JPEG path")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        style_image(args.model, args.input, args.output, args.threads)
    except Exception as err:  # report any failure as one line and a non-zero exit
        print(f"run_one: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
