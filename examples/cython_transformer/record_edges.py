"""Records from plug-in to plug-in without the GIL (after building hotpath)."""
import numpy as np

import hotpath
from reflux import Extractor, Filter, Loader, Pipeline, Transformer

readings = np.zeros(10_000, dtype=hotpath.READING)
readings["sensor"] = np.arange(10_000) % 16
readings["raw"] = np.arange(10_000) % 1000            # 0.0 ... 999.0
chunks = [readings[i:i + 1000] for i in range(0, 10_000, 1000)]
pipe = Pipeline(Extractor(chunks) >> Transformer(hotpath.Calibrate(0.1, -40.0), name="cal")
                >> Filter(hotpath.Above(20.0), name="warm") >> Filter(hotpath.Above(45.0), name="hot")
                >> Loader.to_list(name="out"))
# cal -> warm and warm -> hot are record channels: "warm" is a record pump
assert {box.owner for box in pipe.compile().inboxes if box.records} == {"warm", "hot"}
result = pipe.run()
result.check_accounting()
out = np.concatenate(result.results["out"])
assert len(out) == np.count_nonzero(0.1 * readings["raw"] - 40.0 >= 45.0)
assert result["cal"].received == 10                   # chunks: its input is an object channel
assert result["warm"].received == 10_000 == result.edges[("cal", "warm")]  # records
print(len(out), "hot readings of", len(readings))
