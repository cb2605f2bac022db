"""Type stubs of reflux_core._demo (compiled, internal): the demo's scoring plug-in."""
from typing import Final

from reflux_core.transform import CTransform

EVENT: Final[list[tuple[str, str]]]

class ScoreEvents(CTransform):
    def __init__(self, *, name: str = "score") -> None: ...
