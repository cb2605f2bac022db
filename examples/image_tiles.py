"""Image processing: numpy tiles through a blur, spread over replicas by a Balancer.

    python examples/image_tiles.py [--size 2048] [--tile 256] [--replicas 2]
    reflux run examples/image_tiles.py

The blur is the Cython ``blur3x3`` of ``examples/cython_transformer`` (it
releases the GIL for its loops, so the replicas run on all cores) when that
example has been built and ``hotpath`` is importable::

    pip install --no-build-isolation examples/cython_transformer

and a plain numpy blur otherwise (same result; the replicas then share the GIL).

tiles (Extractor: tiles of a generated image, each with a one-pixel halo)
-> spread (Balancer) -> blur-1 ... blur-N (Transformers: a 3x3 box blur)
-> merge (Funnel) -> assemble (Loader: writes each blurred tile into the
output image).  The result equals blurring the whole image at once.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from reflux import Balancer, Extractor, Funnel, Loader, Pipeline, Transformer

Tile = tuple[int, int, np.ndarray]


# ---------------------------------------------------------------------------
# THE BLUR KERNEL: the compiled one when it was built, else numpy.
# ---------------------------------------------------------------------------

try:  # examples/cython_transformer/hotpath.pyx, once built and installed
    from hotpath import blur3x3 as cython_blur3x3
except ImportError:
    cython_blur3x3 = None


def numpy_box_blur(padded: np.ndarray) -> np.ndarray:
    """3x3 mean of a tile with a one-pixel halo (plain numpy): returns the tile without it."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    acc = np.zeros((h, w), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            acc += padded[dy:dy + h, dx:dx + w]
    return (acc / 9.0).astype(padded.dtype)


def cython_box_blur(padded: np.ndarray) -> np.ndarray:
    """The same with the compiled ``blur3x3`` (float32): it repeats the padded
    tile's edges, which only changes the halo, and the halo is cut off."""
    assert cython_blur3x3 is not None
    return np.asarray(cython_blur3x3(np.ascontiguousarray(padded, dtype=np.float32)))[1:-1, 1:-1]


#: the blur ``build`` uses by default
box_blur = cython_box_blur if cython_blur3x3 is not None else numpy_box_blur


def make_blur_tile(blur: Callable[[np.ndarray], np.ndarray]) -> Callable[[Tile], Tile]:
    """``(y, x, padded tile)`` -> ``(y, x, blurred tile)`` with ``blur``."""
    def blur_tile(tile: Tile) -> Tile:
        y, x, padded = tile
        return y, x, blur(padded)
    return blur_tile


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


def build(image: np.ndarray, tile: int = 256, replicas: int = 2,
          blur: Callable[[np.ndarray], np.ndarray] | None = None) -> Pipeline:
    """Blur ``image`` tile by tile on ``replicas`` blur nodes (``blur``: a function
    of a padded tile, default :data:`box_blur`); the ``assemble`` Loader's result
    is the blurred image."""
    fn = make_blur_tile(blur or box_blur)
    blurs = [Transformer(fn, name=f"blur-{i + 1}", capacity=8) for i in range(replicas)]
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
    print("blur:", "Cython blur3x3 (hotpath)" if box_blur is cython_box_blur else "numpy")
    result = build(image, args.tile, args.replicas).run(progress=None)
    print(result.summary())
    blurred = result.results["assemble"]
    print(f"blurred a {args.size}x{args.size} image: mean {image.mean():.4f} -> {blurred.mean():.4f}, "
          f"std {image.std():.4f} -> {blurred.std():.4f}")


if __name__ == "__main__":
    main()
