"""The web console: a browser UI served by the control plane (``--console-listen``).

Why a package of its own: the console is an optional layer over the public gRPC API; nothing
else in the control plane imports it, and it is only loaded when the console is switched on.
"""
