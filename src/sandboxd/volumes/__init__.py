"""Named persistent volumes: protocol-neutral records, the store's rows and the operations.

Only the v1 protocol has them (``VolumeService``); its codec is
:mod:`sandboxd.controlplane.v1.volumes`, and nothing here imports a public protobuf module.
A volume is a directory on one runner (``backends/local/volumes.py``), registered by an
organization under a name of its choosing, and bound into that organization's sandboxes,
which are then placed on that runner.
"""
