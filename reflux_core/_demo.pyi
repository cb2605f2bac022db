"""Type stubs of reflux_core._demo (compiled, internal): the demo's record plug-ins."""
from typing import Final

import numpy as np
import numpy.typing as npt
from reflux_core.transform import CFilter, CKey, CTransform

EVENT: Final[list[tuple[str, str]]]
KINDS: Final[tuple[str, ...]]
WINDOW: Final[int]
BUY: Final[int]

def parse_lines(lines: list[str]) -> npt.NDArray[np.void]: ...

class KnownKinds(CFilter):
    def __init__(self, *, name: str = "known_kinds") -> None: ...

class ScoreEvents(CTransform):
    def __init__(self, *, name: str = "score") -> None: ...

class KindKey(CKey):
    def __init__(self, *, name: str = "kind_key") -> None: ...

class TripleValue(CTransform):
    def __init__(self, *, name: str = "triple_value") -> None: ...

