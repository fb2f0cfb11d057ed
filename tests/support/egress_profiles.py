"""The platform configuration the egress tests share: one profile with internet and allowlist modes.

Each egress test module starts its own ``sandboxd up`` with this profile (named after the
module) against the network namespace of ``tests/backends/nethost.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["egress_config"]


def egress_config(name: str, allowlist: Sequence[str], *, none_mode: bool = False) -> str:
    """YAML: profile ``name`` (default binding), egress ``internet`` by default, ``lan`` an
    allowlist of ``allowlist`` addresses (each a /32), and a ``none`` mode when asked."""
    cidrs = ", ".join(f'"{address}/32"' for address in allowlist)
    none = "            none: {type: none}\n" if none_mode else ""
    return (
        "profiles:\n"
        f"  - display_name: {name}\n"
        "    spec:\n"
        "      container_image: python:3.11\n"
        "      resource_defaults:\n"
        '        {cpu_request: 50m, memory_request: 64Mi, cpu_limit: "1", memory_limit: 256Mi}\n'
        "      network:\n"
        "        egress:\n"
        "          default: internet\n"
        "          modes:\n"
        "            internet: {type: internet}\n"
        f"{none}"
        f"            lan: {{type: allowlist, cidrs: [{cidrs}]}}\n"
        "default_bindings:\n"
        f"  - {{profile: {name}, is_default: true}}\n"
    )
