"""The wire contract that the client (``cwsandbox``) and the server (``sandboxd``) share.

Why one package: both sides must agree on every message byte for byte, so they import the
same generated code instead of each keeping its own copy (or the server reaching into the
client's private modules). It holds:

* ``sandboxd_protocol.v1beta2``: ``coreweave.sandbox.v1beta2`` (the discovery guide's API;
  official clients 0.19-0.26);
* ``sandboxd_protocol.v1``: ``coreweave.sandbox.v1`` (official clients 0.27-1.22);
* ``sandboxd_protocol.sandboxd_v1``: sandboxd's own services (file transfers, the activity
  trail, the admin API, the runner link);
* ``sandboxd_protocol.quantities``: Kubernetes-style quantity strings (``500m``, ``4Gi``) as
  both sides parse and print them.

Generated modules come from ``proto/`` (``scripts/gen_protos.py``); only protobuf and
grpcio are needed to import any of it.
"""
