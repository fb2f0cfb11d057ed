"""What sandboxd left on this host: namespaces, links, firewall rules, claims nothing can
give back, and processes.

Why a suite-wide check: a leaked veth keeps its subnet's host address, and the next sandbox
given that subnet reaches nothing (a CI run failed that way, far from the test that leaked
it). Each test checks its own sandboxes; this catches what no single test looks for, in CI
(``SANDBOXD_REQUIRE_NO_LEFTOVERS=1``, set by ``.ci/run``) at the end of the session,
counting only what appeared during it.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import subprocess
import time

NETNS_DIR = "/run/netns"
IPAM_DIR = "/run/sandboxd/ipam"
IDMAP_DIR = "/run/sandboxd/idmap"
OWNERS_DIR = "/run/sandboxd/owners"
# Sandbox veths are ``sbx<tag>``; the test helpers' own links start with ``sbx`` too.
LINK_PREFIX = "sbx"


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def host_network_leftovers() -> set[str]:
    """Every sandboxd namespace, ``sbx*`` link, firewall rule or chain, and stray claim, now."""
    found: set[str] = set()
    if os.path.isdir(NETNS_DIR):
        found |= {f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith("sandboxd-")}
    for line in _run("ip", "-o", "link").splitlines():
        fields = line.split(":", 2)
        if len(fields) > 1 and fields[1].strip().startswith(LINK_PREFIX):
            found.add(f"link {fields[1].strip().split('@')[0]}")
    for table in ("filter", "nat"):
        for line in _run("iptables-save", "-t", table).splitlines():
            if "sandboxd:" in line or re.match(r"^:(SBX-|SANDBOXD-)", line):
                found.add(f"{table} {line}")
    return found | unreapable_claims()


def unreapable_claims() -> set[str]:
    """Subnet and user-id-range claims that nothing could ever give back, now.

    A claim names its owner: a backend key (subnets) or its group ``sandboxd-<key>`` (id
    ranges). The orphan sweep goes by the owners' lock files (``/run/sandboxd/owners``),
    which a backend holds while it runs and the sweep removes once it took everything of a
    dead one back; so a claim whose owner has no lock file, or an empty one (it names
    nobody), stays taken until the host reboots (``backends/local/claim_files.py``,
    ``orphans.py``). A dead owner's claims with its lock file still there are the next
    sweep's, not leftovers.
    """
    owners = set(os.listdir(OWNERS_DIR)) if os.path.isdir(OWNERS_DIR) else set()
    found: set[str] = set()
    for directory, prefix in [(IDMAP_DIR, "sandboxd-"), *((p, "") for p in _subnet_pools())]:
        for path in _claim_files(directory):
            try:
                with open(path) as fh:
                    owner = (fh.read().split() or [""])[0]
            except OSError:  # given back meanwhile
                continue
            if not owner:
                found.add(f"empty claim {path}")
            elif owner.removeprefix(prefix) not in owners:
                found.add(f"claim {path} of {owner}, which has no lock file")
    return found


def _subnet_pools() -> list[str]:
    """The pool directories under ``IPAM_DIR`` (not its lock file)."""
    if not os.path.isdir(IPAM_DIR):
        return []
    pools = (os.path.join(IPAM_DIR, name) for name in os.listdir(IPAM_DIR))
    return [pool for pool in pools if os.path.isdir(pool)]


def _claim_files(directory: str) -> list[str]:
    """The claims in ``directory``: its files but hidden ones (locks)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    paths = (os.path.join(directory, n) for n in names if not n.startswith("."))
    return [path for path in paths if os.path.isfile(path)]


# The names sandboxd's own processes give themselves (prctl), and how its CLI is started.
PROCESS_NAMES = ("sandboxd-init", "sandboxd-keeper", "sandboxd-spare", "sandboxd-zygote")
CLI_MARKERS = ("-m sandboxd ", "/bin/sandboxd ")


def sandboxd_processes() -> set[str]:
    """Every live sandboxd process (agents, keepers, zygotes, CLI processes), by pid."""
    found: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if comm in PROCESS_NAMES or any(marker in args for marker in CLI_MARKERS):
            found.add(f"process {entry} {comm}: {args[:120].strip()}")
    return found


def left_behind(before: set[str], grace: float = 15.0) -> list[str]:
    """What appeared since ``before`` and is still there after ``grace`` seconds at most.

    Processes get the grace (an agent killed a moment ago is reaped by its keeper); links,
    namespaces and rules are looked at again with them.
    """
    deadline = time.monotonic() + grace
    while True:
        left = (host_network_leftovers() | sandboxd_processes()) - before
        if not left or time.monotonic() >= deadline:
            return sorted(left)
        time.sleep(0.5)


WARNINGS_ENV = "SANDBOXD_TEST_WARNINGS"
"""The file every test process appends sandboxd's warnings to (set by the controller)."""


def record_warnings() -> None:
    """Append this process's ``sandboxd`` warnings to the suite's file (named in the env).

    Why: a leftover is found at the end of the session, far from the test and the process
    that left it, and pytest shows no log of a test that passed. The warnings that name
    the leftover (its tag, say) tell which step failed and why (``warnings_about``).
    """
    path = os.environ.get(WARNINGS_ENV)
    if not path:
        return
    handler = logging.FileHandler(path)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"%(asctime)s pid {os.getpid()} %(name)s: %(message)s"))
    logging.getLogger("sandboxd").addHandler(handler)


def warnings_about(left: list[str], limit: int = 40) -> list[str]:
    """The recorded warnings that name a sandbox network tag found in ``left``, with context.

    Context: every warning of the same process in the ``CONTEXT_SECONDS`` before one that
    names a tag. Why: the step that failed often names no tag (a command that could not be
    started says only why), and the warning that does ("could not be removed") says only
    that it failed. A CI run left four networks' rules with nothing else to go by.
    """
    path = os.environ.get(WARNINGS_ENV)
    tags = {m.group(1) for thing in left for m in re.finditer(r"sandboxd:([0-9a-f]{10})", thing)}
    if not path or not tags or not os.path.exists(path):
        return []
    with open(path, errors="replace") as fh:
        lines = [line.rstrip() for line in fh]
    naming = [i for i, line in enumerate(lines) if any(tag in line for tag in tags)]
    keep: set[int] = set()
    for i in naming:
        keep.add(i)
        when, pid = _stamp(lines[i])
        for j in range(i - 1, -1, -1):
            before, other = _stamp(lines[j])
            if when is None or before is None or when - before > CONTEXT_SECONDS:
                break
            if other == pid:
                keep.add(j)
    return [lines[i] for i in sorted(keep)][-limit:]


CONTEXT_SECONDS = 30.0
"""How far back ``warnings_about`` shows a process's other warnings."""


def _stamp(line: str) -> tuple[float | None, str]:
    """A recorded warning's time (seconds) and pid, as ``record_warnings`` wrote them."""
    found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) pid (\d+) ", line)
    if found is None:
        return None, ""
    stamp = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
    return stamp + int(found.group(2)) / 1000, found.group(3)
