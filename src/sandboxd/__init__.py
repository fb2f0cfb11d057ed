"""sandboxd: the server side of a self-hostable sandbox platform.

The control plane (``sandboxd.controlplane``) serves the public ``coreweave.sandbox.v1beta2``
gRPC API and an internal runner protocol; runners (``sandboxd.runner``) dial out to it and
bridge real compute into the platform.
"""

__version__ = "0.1.0"
