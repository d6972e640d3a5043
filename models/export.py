#!/usr/bin/env python3
"""Export atelier's built-in style models as TorchScript files.

    python models/export.py --out DIR [--only NAME,...] [--check] [--samples DIR]

Writes ``DIR/{name}.pt`` for every style below and prints one line per file
(name, path, size in bytes, SHA-256). No pretrained weights are involved:

- ``sketch``, ``mosaic``, ``palette`` and ``painterly`` are image filters built
  from hand-set kernels, palettes and constants; they are deterministic and
  cheap enough for a CPU worker.
- ``transformer`` is the fast-neural-style network of Johnson et al. with
  weights from a fixed seed. Its look is meaningless; it exists to exercise
  the runtime with a realistically sized convolutional model.

Every module follows the contract in ``models/README.md``: float32
``N×3×H×W`` RGB in ``[0, 255]`` in, the same shape and range out, any ``H``
and ``W`` that are multiples of 8, batch items independent of each other.
Inputs of another dtype (uint8, float64) are converted to float32 first.

``--check`` loads each written file back with ``torch.jit.load`` and verifies
that contract plus that the styles differ visibly from the input and from each
other on a synthetic test image; ``--samples DIR`` also writes that image and
every style's output as PNG files. The exit status is non-zero on any failure.
"""

import argparse
import hashlib
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Seed for the transformer's initial weights; changing it changes the file.
TRANSFORMER_SEED = 20240611

# Names the Rust side and the docs refer to; keep them stable.
LOOK_STYLES = ("sketch", "mosaic", "palette", "painterly")
ALL_STYLES = LOOK_STYLES + ("transformer",)


# ---------------------------------------------------------------------------
# Shared TorchScript helpers. Images inside the filters are float in [0, 1].
# ---------------------------------------------------------------------------


def luminance(x: Tensor) -> Tensor:
    """Rec. 601 luma of an N×3×H×W RGB image, as N×1×H×W."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    """0 below edge0, 1 above edge1, a smooth cubic ramp between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def separable_blur(x: Tensor, kernel: Tensor) -> Tensor:
    """Blur every channel with a 1-D kernel along rows, then columns.

    Edges are replicated, so the output has the input's size for any H, W.
    Channels are folded into the batch so each plane is filtered on its own.
    """
    n, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)
    r = kernel.size(0) // 2
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, [r, r, 0, 0], mode="replicate"), kernel.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, [0, 0, r, r], mode="replicate"), kernel.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def gaussian_kernel(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian covering ±3 sigma (built once, at export)."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def rgb_table(colours: Sequence[tuple[int, int, int]]) -> Tensor:
    """A K×3 float table in [0, 1] from 8-bit RGB triples."""
    return torch.tensor(colours, dtype=torch.float32) / 255.0


# ---------------------------------------------------------------------------
# sketch: pencil drawing on tinted paper.
# ---------------------------------------------------------------------------


class Sketch(nn.Module):
    """Pencil sketch: dodge shading, Sobel outlines, diagonal hatching.

    The grey image is "colour-dodged" by its blurred negative, which leaves
    flat areas white and draws soft strokes along tone changes; Sobel edges of
    the lightly blurred luma add firm outlines; dark tones get one or two sets
    of diagonal hatching. The result is tinted like grey-beige paper.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("narrow", gaussian_kernel(1.0))
        self.register_buffer("wide", gaussian_kernel(4.0))
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1))
        self.register_buffer("paper", rgb_table([(236, 230, 216)]).view(1, 3, 1, 1))
        self.register_buffer("graphite", rgb_table([(52, 52, 60)]).view(1, 3, 1, 1))
        self.hatch_period = 7.0

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0) / 255.0
        h, w = x.size(2), x.size(3)
        grey = luminance(x)

        # Dodge: grey / (1 - blur(1 - grey)); equals 1 wherever tone is flat.
        shade = (grey / (1.0 - separable_blur(1.0 - grey, self.wide)).clamp(min=1e-3)).clamp(0.0, 1.0)
        shade = shade * shade  # deepen the strokes a little

        # Outlines: Sobel gradient magnitude of the softened luma.
        soft = separable_blur(grey, self.narrow)
        grad = F.conv2d(F.pad(soft, [1, 1, 1, 1], mode="replicate"), self.sobel)
        edge = torch.sqrt((grad * grad).sum(1, keepdim=True) + 1e-8)
        outline = 1.0 - 0.85 * smoothstep(0.06, 0.40, edge)

        # Hatching: thin diagonal lines, a second direction for the darkest tones.
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
        omega = 2.0 * math.pi / self.hatch_period
        line_a = torch.cos((xs + ys) * omega).clamp(min=0.0) ** 4
        line_b = torch.cos((xs - ys) * omega).clamp(min=0.0) ** 4
        dark = 1.0 - smoothstep(0.20, 0.55, soft)
        darker = 1.0 - smoothstep(0.05, 0.30, soft)
        hatch = (1.0 - 0.55 * dark * line_a) * (1.0 - 0.55 * darker * line_b)

        ink = (shade * outline * hatch).clamp(0.0, 1.0)  # 1 = bare paper
        out = self.graphite + (self.paper - self.graphite) * ink
        return (out * 255.0).clamp(0.0, 255.0)


# ---------------------------------------------------------------------------
# mosaic: square tiles in a fixed palette, separated by dark grout.
# ---------------------------------------------------------------------------

MOSAIC_PALETTE = [
    (242, 238, 226),  # chalk white
    (222, 198, 150),  # sand
    (204, 150, 60),  # ochre
    (186, 92, 52),  # terracotta
    (212, 54, 42),  # vermilion
    (236, 204, 70),  # lemon
    (110, 58, 122),  # plum
    (140, 36, 40),  # oxblood
    (214, 132, 136),  # rose
    (116, 124, 58),  # olive
    (150, 176, 128),  # sage
    (36, 112, 112),  # teal
    (40, 72, 156),  # cobalt
    (126, 174, 214),  # sky
    (24, 34, 70),  # navy
    (34, 74, 52),  # bottle green
    (48, 44, 46),  # charcoal
    (128, 120, 116),  # slate
]


class Mosaic(nn.Module):
    """Tile mosaic: block average, nearest palette colour, grout lines.

    Each ``tile``×``tile`` block (partial blocks at the right and bottom
    edges included, via ceil-mode pooling) becomes one palette colour, chosen
    by a sharp softmax over colour distance (the soft choice keeps the output
    continuous in the input). Tiles are expanded back to exactly H×W, given a
    faint bevel and framed by ``grout`` pixels of dark mortar.
    """

    def __init__(self, tile: int = 12, grout: int = 2) -> None:
        super().__init__()
        self.tile = tile
        self.grout = grout
        self.temperature = 0.004  # in squared [0, 1] RGB distance
        palette = rgb_table(MOSAIC_PALETTE)
        self.register_buffer("palette", palette.view(1, -1, 3, 1, 1))
        self.register_buffer("mortar", rgb_table([(44, 40, 36)]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0) / 255.0
        h, w = x.size(2), x.size(3)
        t = self.tile

        # One mean colour per tile, slightly more saturated so tiles pick lively colours.
        cells = F.avg_pool2d(x, t, stride=t, ceil_mode=True)
        grey = luminance(cells)
        cells = (grey + 1.3 * (cells - grey)).clamp(0.0, 1.0)

        # Soft nearest palette colour: N×K weights over the K palette entries.
        dist = ((cells.unsqueeze(1) - self.palette) ** 2).sum(2)
        weights = torch.softmax(-dist / self.temperature, dim=1)
        tiles = (weights.unsqueeze(2) * self.palette).sum(1)

        # Back to exactly H×W: repeat each tile t times and crop the overhang.
        tiles = tiles.repeat_interleave(t, dim=2).repeat_interleave(t, dim=3)[:, :, :h, :w]

        # Position inside the tile decides bevel and grout.
        py = torch.remainder(torch.arange(h, device=x.device), t).view(1, 1, h, 1)
        px = torch.remainder(torch.arange(w, device=x.device), t).view(1, 1, 1, w)
        first = self.grout
        light = ((py == first) | (px == first)).to(x.dtype)
        shadow = ((py == t - 1) | (px == t - 1)).to(x.dtype)
        tiles = tiles * (1.0 + 0.12 * light - 0.18 * shadow)
        grout = ((py < first) | (px < first)).to(x.dtype)
        out = tiles * (1.0 - grout) + self.mortar * grout
        return (out * 255.0).clamp(0.0, 255.0)


# ---------------------------------------------------------------------------
# palette: gradient map of luminance onto a sunset palette.
# ---------------------------------------------------------------------------

SUNSET_STOPS = [
    (16, 12, 58),  # indigo night
    (88, 26, 116),  # violet
    (206, 52, 96),  # magenta red
    (248, 144, 56),  # orange
    (255, 234, 168),  # pale gold
]


class Palette(nn.Module):
    """Gradient map: luma (after an S-curve) indexes a fixed colour ramp.

    Dark tones become indigo and violet, mid tones magenta and orange, lights
    pale gold; the input's own hues are discarded except for a 10 % tint, so
    the look is a strongly saturated duotone-like sunset.
    """

    def __init__(self) -> None:
        super().__init__()
        stops = rgb_table(SUNSET_STOPS)
        self.register_buffer("stops", stops.view(1, -1, 3, 1, 1))
        self.register_buffer("positions", torch.arange(stops.size(0), dtype=torch.float32).view(1, -1, 1, 1))
        self.keep = 0.10

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0) / 255.0
        grey = luminance(x)
        # Half an S-curve for contrast; keeps 0 and 1 fixed.
        grey = 0.5 * grey + 0.5 * smoothstep(0.0, 1.0, grey)
        # Piecewise-linear ramp as a sum of hat functions over the stops.
        scaled = grey * float(self.stops.size(1) - 1)
        hats = (1.0 - (scaled - self.positions).abs()).clamp(min=0.0)
        mapped = (hats.unsqueeze(2) * self.stops).sum(1)
        out = (1.0 - self.keep) * mapped + self.keep * x
        return (out * 255.0).clamp(0.0, 255.0)


# ---------------------------------------------------------------------------
# painterly: Kuwahara-style smoothing, soft posterize, saturation boost.
# ---------------------------------------------------------------------------


def kuwahara(x: Tensor, radius: int, sharpness: float) -> Tensor:
    """Generalised Kuwahara filter built from box filters.

    For each pixel, the four (radius+1)² squares that have it as a corner get
    a mean colour and a luma variance; the output mixes the means, weighted
    towards the calmest square (weight ∝ (min_var / var)^sharpness). Flat
    areas smooth out while edges stay sharp, like brush strokes.
    """
    h, w = x.size(2), x.size(3)
    r = radius
    padded = F.pad(x, [r, r, r, r], mode="replicate")
    grey = luminance(padded)
    mean = F.avg_pool2d(padded, r + 1, stride=1)
    grey_mean = F.avg_pool2d(grey, r + 1, stride=1)
    var = (F.avg_pool2d(grey * grey, r + 1, stride=1) - grey_mean * grey_mean).clamp(min=0.0)

    # Pooled index (i, j) covers padded rows i..i+r: offsets 0 and r select
    # the squares above/left and below/right of each pixel.
    means = torch.stack(
        [
            mean[:, :, 0:h, 0:w],
            mean[:, :, 0:h, r : r + w],
            mean[:, :, r : r + h, 0:w],
            mean[:, :, r : r + h, r : r + w],
        ],
        dim=1,
    )
    variances = torch.cat(
        [
            var[:, :, 0:h, 0:w],
            var[:, :, 0:h, r : r + w],
            var[:, :, r : r + h, 0:w],
            var[:, :, r : r + h, r : r + w],
        ],
        dim=1,
    )
    eps = 1e-5
    weights = ((variances.min(dim=1, keepdim=True)[0] + eps) / (variances + eps)) ** sharpness
    weights = weights / weights.sum(1, keepdim=True)
    return (means * weights.unsqueeze(2)).sum(1)


class Painterly(nn.Module):
    """Oil-paint look: three Kuwahara passes, soft posterize, more saturation.

    The posterize step snaps each channel to ``levels`` values with a short
    smooth transition instead of a hard step, so tiny input changes never
    flip a level (this keeps batched and single runs equal within tolerance).
    """

    def __init__(self) -> None:
        super().__init__()
        self.passes = [(5, 6.0), (3, 6.0), (2, 4.0)]
        self.levels = 6
        self.saturation = 1.45

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0) / 255.0
        for radius, sharpness in self.passes:
            x = kuwahara(x, radius, sharpness)

        grey = luminance(x)
        x = (grey + self.saturation * (x - grey)).clamp(0.0, 1.0)

        steps = float(self.levels - 1)
        scaled = x * steps
        base = torch.floor(scaled)
        x = (base + smoothstep(0.35, 0.65, scaled - base)) / steps
        return (x * 255.0).clamp(0.0, 255.0)


# ---------------------------------------------------------------------------
# transformer: Johnson et al. fast-neural-style network, seeded weights.
# ---------------------------------------------------------------------------


class ConvLayer(nn.Module):
    """Reflection padding then a convolution, so sizes only change by stride."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour 2× upsampling followed by a padded convolution."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = ConvLayer(cin, cout, kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformerNet(nn.Module):
    """Image transformation network (Johnson, Alahi, Fei-Fei 2016)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLayer(3, 32, 9)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res = nn.Sequential(*[ResidualBlock(128) for _ in range(5)])
        self.up1 = UpsampleConvLayer(128, 64, 3)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.up2 = UpsampleConvLayer(64, 32, 3)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.conv_out = ConvLayer(32, 3, 9)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = F.relu(self.in4(self.up1(y)))
        y = F.relu(self.in5(self.up2(y)))
        return self.conv_out(y)


class Transformer(nn.Module):
    """TransformerNet wrapped to meet the contract.

    The network sees the image scaled to [0, 1]; its output is read as a
    bounded residual (``gain``·tanh) added to the input, resized to exactly
    H×W should the strided layers ever round, then clamped to [0, 255].
    """

    def __init__(self, gain: float = 96.0) -> None:
        super().__init__()
        self.net = TransformerNet()
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0)
        h, w = x.size(2), x.size(3)
        # The network runs in its weights' dtype (an engine may convert the
        # module to bfloat16); the residual and the clamp stay in float32.
        dtype = self.net.conv1.conv.weight.dtype
        y = self.net((x / 255.0).to(dtype)).to(torch.float32)
        if y.size(2) != h or y.size(3) != w:
            y = F.interpolate(y, size=[h, w], mode="bilinear", align_corners=False)
        return (x + self.gain * torch.tanh(y)).clamp(0.0, 255.0)


def build_transformer() -> nn.Module:
    """Transformer with weights from TRANSFORMER_SEED (same file every time)."""
    torch.manual_seed(TRANSFORMER_SEED)
    return Transformer()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "sketch": Sketch,
    "mosaic": Mosaic,
    "palette": Palette,
    "painterly": Painterly,
    "transformer": build_transformer,
}


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def export(name: str, out_dir: Path) -> Path:
    """Script one style in eval mode, save it, print name, path, size, SHA-256."""
    module = BUILDERS[name]().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(module)
    path = out_dir / f"{name}.pt"
    scripted.save(str(path))
    data = path.read_bytes()
    print(f"{name}\t{path}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}", flush=True)
    return path


# ---------------------------------------------------------------------------
# Check: contract, distinctness, samples.
# ---------------------------------------------------------------------------

CHECK_SHAPES = [(1, 3, 64, 64), (2, 3, 72, 40), (1, 3, 256, 200), (1, 3, 8, 8)]
BATCH_TOLERANCE = 1e-3
MIN_DIFFERENCE = 12.0


def synthetic_image(size: int = 256, seed: int = 7) -> np.ndarray:
    """A 3×size×size float32 test card in [0, 255].

    Colour gradients, filled circles, a stripe band, a checker patch and
    Gaussian noise from a fixed seed: enough edges, flats and colours to tell
    the styles apart.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    img = np.stack([255 * xx, 255 * yy, 255 * (1 - 0.5 * (xx + yy))])
    circles = [
        (0.30, 0.30, 0.16, (230, 40, 40)),
        (0.70, 0.35, 0.12, (30, 160, 60)),
        (0.45, 0.72, 0.20, (250, 220, 60)),
        (0.78, 0.78, 0.09, (20, 20, 30)),
    ]
    for cy, cx, r, colour in circles:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        for c in range(3):
            img[c][inside] = colour[c]
    band = (yy > 0.05) & (yy < 0.18)
    stripes = (np.floor(xx * size / 6) % 2 == 0) & band
    img[:, stripes] = 245.0
    img[:, band & ~stripes] = 25.0
    checker = (xx > 0.05) & (xx < 0.25) & (yy > 0.6) & (yy < 0.9)
    dark = checker & ((np.floor(xx * size / 8) + np.floor(yy * size / 8)) % 2 == 0)
    img[:, checker] = 200.0
    img[:, dark] = 60.0
    img += rng.normal(0.0, 6.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def write_png(path: Path, chw: np.ndarray) -> None:
    """Write a 3×H×W array in [0, 255] as an 8-bit RGB PNG (no dependencies)."""
    rgb = np.clip(np.rint(chw), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    # Each scanline starts with filter type 0 (None).
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def check_contract(name: str, model: torch.jit.ScriptModule) -> list[str]:
    """Shape, dtype, range, finiteness, determinism and batch independence."""
    problems: list[str] = []
    gen = torch.Generator().manual_seed(11)
    for shape in CHECK_SHAPES:
        x = torch.rand(shape, generator=gen) * 255.0
        tag = "x".join(str(s) for s in shape)
        y = model(x)
        if tuple(y.shape) != shape:
            problems.append(f"{name} {tag}: output shape {tuple(y.shape)}")
            continue
        if y.dtype != torch.float32:
            problems.append(f"{name} {tag}: output dtype {y.dtype}")
        if not bool(torch.isfinite(y).all()):
            problems.append(f"{name} {tag}: non-finite output")
        elif float(y.min()) < 0.0 or float(y.max()) > 255.0:
            problems.append(f"{name} {tag}: range [{float(y.min()):.3f}, {float(y.max()):.3f}]")
        if not torch.equal(y, model(x)):
            problems.append(f"{name} {tag}: two runs differ")
        for i in range(shape[0]):
            alone = model(x[i : i + 1])
            gap = float((alone - y[i : i + 1]).abs().max())
            if gap > BATCH_TOLERANCE:
                problems.append(f"{name} {tag}: batch item {i} differs from a lone run by {gap:.2e}")
    return problems


def time_forward(model: torch.jit.ScriptModule, x: Tensor, runs: int = 5) -> float:
    """Best-of-``runs`` forward time in milliseconds (after one warm-up)."""
    model(x)
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def run_check(paths: dict[str, Path], samples: Path | None) -> int:
    """Load the written files and verify them; return the number of failures."""
    torch.set_num_threads(1)  # timings below are per core
    problems: list[str] = []
    card = synthetic_image()
    x = torch.from_numpy(card).unsqueeze(0)
    outputs: dict[str, Tensor] = {}
    print("\nstyle        ms@256² (1 thread)   mean |out - in|")
    with torch.inference_mode():
        for name, path in paths.items():
            model = torch.jit.load(str(path))
            model.eval()
            problems += check_contract(name, model)
            y = model(x)
            outputs[name] = y
            diff = float((y - x).abs().mean())
            ms = time_forward(model, x, runs=3 if name == "transformer" else 5)
            print(f"{name:<12} {ms:>10.1f}          {diff:>8.1f}")
            if diff <= MIN_DIFFERENCE:
                problems.append(f"{name}: mean difference to the input {diff:.1f} <= {MIN_DIFFERENCE}")

    looks = [n for n in LOOK_STYLES if n in outputs]
    if len(looks) > 1:
        print("\nmean |a - b|  " + " ".join(f"{n:>10}" for n in looks))
        for a in looks:
            row = []
            for b in looks:
                d = float((outputs[a] - outputs[b]).abs().mean())
                row.append(f"{d:>10.1f}" if a != b else f"{'-':>10}")
                if a < b and d <= MIN_DIFFERENCE:
                    problems.append(f"{a} vs {b}: mean difference {d:.1f} <= {MIN_DIFFERENCE}")
            print(f"{a:<13} " + " ".join(row))

    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        write_png(samples / "input.png", card)
        for name, y in outputs.items():
            write_png(samples / f"{name}.png", y[0].numpy())
        print(f"\nsamples written to {samples}")

    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    print("\ncheck: " + ("ok" if not problems else f"{len(problems)} failure(s)"))
    return len(problems)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export atelier's built-in TorchScript style models.")
    parser.add_argument("--out", type=Path, required=True, help="directory for {name}.pt files")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(ALL_STYLES)}")
    parser.add_argument("--check", action="store_true", help="load the files back and verify the contract")
    parser.add_argument("--samples", type=Path, help="with --check: write PNGs of the test image and outputs here")
    return parser.parse_args(argv)


# Runs this file as `models/export.py` from the repository's root.
_BOOT = (
    "import sys; f = 'models/export.py'; sys.argv[0] = f; "
    "exec(compile(open(f).read(), f, 'exec'), {'__name__': '__main__', '__file__': f})"
)


def reproducible() -> None:
    """Re-run this script as `models/export.py`, from the repository's root,
    with PYTHONHASHSEED=0, unless it already runs so.

    TorchScript writes some class attributes in set order, which follows
    Python's per-process string hashing, and it keeps the path of the
    scripted code's file in each model's debug information
    (`code/*.debug_pkl`): a fixed seed and a path relative to the
    repository make every export byte-identical (same SHA-256) for the same
    torch version, wherever the checkout lies.
    """
    if os.environ.get("PYTHONHASHSEED") == "0" and not os.path.isabs(__file__):
        return
    here = Path(__file__).resolve()
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if i > 0 and argv[i - 1] in ("--out", "--samples"):
            argv[i] = os.path.abspath(a)
        elif a.startswith(("--out=", "--samples=")):
            k, v = a.split("=", 1)
            argv[i] = f"{k}={os.path.abspath(v)}"
    os.chdir(here.parent.parent)
    env = dict(os.environ, PYTHONHASHSEED="0")
    os.execve(sys.executable, [sys.executable, "-c", _BOOT, *argv], env)


def main(argv: Sequence[str]) -> int:
    reproducible()
    args = parse_args(argv)
    names = list(ALL_STYLES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BUILDERS]
        if unknown:
            print(f"export: unknown style(s) {', '.join(unknown)}; known: {', '.join(ALL_STYLES)}", file=sys.stderr)
            return 2
    if args.samples is not None and not args.check:
        print("export: --samples needs --check", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: export(name, args.out) for name in names}
    if args.check and run_check(paths, args.samples):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
