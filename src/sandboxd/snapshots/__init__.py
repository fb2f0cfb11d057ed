"""File-system snapshots: protocol-neutral records, content store and operations.

The public protocols (v1beta2 today, v1 later) are thin codecs over :mod:`.service`;
nothing here imports a public protobuf module.
"""
