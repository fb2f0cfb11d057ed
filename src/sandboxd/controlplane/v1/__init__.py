"""The ``coreweave.sandbox.v1`` front end: the protocol of the official clients 0.27–1.22.

Why a package beside the v1beta2 services: both protocols share one port, one store, one
scheduler and the same runners (protocol/v1.md §16), so these modules are thin codecs. They
translate v1 messages onto the protocol-neutral plumbing the v1beta2 gateway uses
(:class:`~sandboxd.controlplane.lifecycle.Lifecycle`, :mod:`..sandbox_queries`,
:class:`~sandboxd.controlplane.files.Files`, the streaming relay) and back, and keep only
what v1 adds: each sandbox's echoed spec and create request id
(:mod:`sandboxd.store.v1_resources`). The generated v1 code is imported only from these
modules (``sandboxd_protocol.v1``).
"""
