"""Image processing: numpy tiles through a blur, spread over replicas by a Balancer.

    python examples/image_tiles.py [--size 2048] [--tile 256] [--replicas 2]
    reflux run examples/image_tiles.py

tiles (Extractor: tiles of a generated image, each with a one-pixel halo)
-> spread (Balancer) -> blur-1 ... blur-N (Transformers: a 3x3 box blur)
-> merge (Funnel) -> assemble (Loader: writes each blurred tile into the
output image).  The result equals blurring the whole image at once.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np

from reflux import Balancer, Extractor, Funnel, Loader, Pipeline, Transformer

Tile = tuple[int, int, np.ndarray]


# ---------------------------------------------------------------------------
# THE BLUR KERNEL.  Plain numpy today: the Cython transformer API (issue 5)
# has not landed yet.  When it has, replace ``box_blur`` (and the Transformer
# built on it in ``build``) by a Cython ``CTransform`` that blurs the tile
# without the GIL, so the replicas run on all cores; the rest stays as is.
# ---------------------------------------------------------------------------

def box_blur(padded: np.ndarray) -> np.ndarray:
    """3x3 mean of a tile with a one-pixel halo: returns the tile without it."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    acc = np.zeros((h, w), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            acc += padded[dy:dy + h, dx:dx + w]
    return (acc / 9.0).astype(padded.dtype)


def blur_tile(tile: Tile) -> Tile:
    """``(y, x, padded tile)`` -> ``(y, x, blurred tile)``."""
    y, x, padded = tile
    return y, x, box_blur(padded)


def make_image(size: int, seed: int = 3) -> np.ndarray:
    """A random greyscale image, float32 in [0, 1)."""
    return np.random.default_rng(seed).random((size, size), dtype=np.float32)


def tiles(image: np.ndarray, tile: int) -> Iterator[Tile]:
    """``(y, x, tile with a one-pixel halo)`` for every tile of ``image`` (edges repeated)."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            th, tw = min(tile, h - y), min(tile, w - x)
            yield y, x, padded[y:y + th + 2, x:x + tw + 2].copy()


class Assemble:
    """A Loader function writing blurred tiles into one output image."""

    def __init__(self, shape: tuple[int, int], dtype: Any) -> None:
        self.image = np.zeros(shape, dtype=dtype)
        self.tiles = 0

    def __call__(self, tile: Tile) -> None:
        y, x, data = tile
        self.image[y:y + data.shape[0], x:x + data.shape[1]] = data
        self.tiles += 1

    def result(self) -> np.ndarray:
        return self.image


def build(image: np.ndarray, tile: int = 256, replicas: int = 2) -> Pipeline:
    """Blur ``image`` tile by tile on ``replicas`` blur nodes; the ``assemble``
    Loader's result is the blurred image."""
    blurs = [Transformer(blur_tile, name=f"blur-{i + 1}", capacity=8) for i in range(replicas)]
    p = Pipeline(name="image-tiles", capacity=16, batch_size=4)
    p.add(Extractor(tiles(image, tile), name="tiles") >> Balancer(name="spread") >> blurs
          >> Funnel(name="merge") >> Loader(Assemble(image.shape, image.dtype), name="assemble"))
    return p


def pipeline() -> Pipeline:
    """For ``reflux run examples/image_tiles.py``: a 1024x1024 image in 128-pixel tiles."""
    return build(make_image(1024), tile=128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    image = make_image(args.size)
    result = build(image, args.tile, args.replicas).run(progress=None)
    print(result.summary())
    blurred = result.results["assemble"]
    print(f"blurred a {args.size}x{args.size} image: mean {image.mean():.4f} -> {blurred.mean():.4f}, "
          f"std {image.std():.4f} -> {blurred.std():.4f}")


if __name__ == "__main__":
    main()
