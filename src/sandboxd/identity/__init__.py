"""Who is calling: API keys (organization + role), runner join tokens and runner credentials.

Module map: ``keyformat`` (the string formats, minting and digests), ``model`` (roles, names and
the records the store keeps). The control plane's use of them (cache, interceptor, admin API)
lives in :mod:`sandboxd.controlplane`.
"""
