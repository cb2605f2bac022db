"""Run the compiled hot paths in a reflux pipeline (after building hotpath)."""
import numpy as np

import hotpath
from reflux import Extractor, Loader, Pipeline, Transformer

# record lane: chunks of readings through the CTransform, no GIL per chunk
rng = np.random.default_rng(7)
readings = np.zeros(10_000, dtype=hotpath.READING)
readings["sensor"] = np.arange(10_000) % 16
readings["raw"] = rng.uniform(-10, 1000, 10_000)
chunks = [readings[i:i + 1000] for i in range(0, 10_000, 1000)]
cal = Pipeline(Extractor(chunks) >> Transformer(hotpath.Calibrate(0.1, -40.0)) >> Loader.to_list(name="out"))
celsius = np.concatenate(cal.run().results["out"])

# object lane: image tiles through two replicas of blur3x3, in input order
tiles = [rng.random((64, 64), dtype=np.float32) for _ in range(8)]
blur3 = Transformer(hotpath.blur3x3, parallel=2, ordered=True, batch_size=1)
blurred = Pipeline(Extractor(tiles) >> blur3 >> Loader.to_list(name="out")).run().results["out"]
print(len(celsius), "readings,", len(blurred), "tiles")
