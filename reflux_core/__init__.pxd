# The curated public cimport surface of reflux_core:
#     from reflux_core cimport RecordChannel
# Changing what is declared here, or in the .pxd files it names, is an ABI
# change: bump reflux_core.ABI_VERSION.
from reflux_core.channel cimport Channel, SPSCChannel, MPMCChannel, RecordChannel
from reflux_core.transform cimport (
    CPlugin, CTransform, CFilter, CKey, RecordPump, reflux_status, reflux_plugin,
)
