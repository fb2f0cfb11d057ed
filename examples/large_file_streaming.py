"""Move a large file into a sandbox and back with constant memory, and check it arrived intact.

    python examples/large_file_streaming.py [MIB]     (default 256 MiB)

``write_file_streaming`` pulls the generator only as fast as the sandbox takes the bytes,
and ``read_file_streaming`` holds at most a few MiB unread, so this process's memory stays
flat whatever the size. Prints one JSON line: sizes, digests, seconds, peak memory.
"""

import hashlib
import json
import resource
import sys
import time

from cwsandbox import ResourceOptions, Sandbox

MIB = 1024 * 1024


def peak_rss_kib():
    """This program's peak resident memory (KiB).

    ``VmHWM`` where there is ``/proc``: ``ru_maxrss`` also counts what the parent held when
    it forked us (Linux keeps the larger of the two across ``execve``), so a big test
    runner would look like our memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def blocks(total_mib):
    """Deterministic 1 MiB blocks, generated on the fly (nothing is held in memory)."""
    for i in range(total_mib):
        yield i.to_bytes(8, "big") * (MIB // 8)


def main(total_mib):
    expected = hashlib.sha256()
    for block in blocks(total_mib):
        expected.update(block)
    # The sandbox's page cache counts against its memory limit: give it room for the file.
    # Small requests so that it fits a small host; the limits are what the transfer may use.
    resources = ResourceOptions(
        requests={"cpu": "100m", "memory": "64Mi"}, limits={"cpu": "2", "memory": "3Gi"}
    )
    with Sandbox.run(resources=resources) as sandbox:
        started = time.monotonic()
        sandbox.write_file_streaming("/root/big.bin", blocks(total_mib)).result()
        wrote = time.monotonic() - started
        peak_after_write = peak_rss_kib()
        remote = sandbox.exec(["sha256sum", "/root/big.bin"]).result().stdout.split()[0]

        started = time.monotonic()
        received, digest = 0, hashlib.sha256()
        for chunk in sandbox.read_file_streaming("/root/big.bin"):
            received += len(chunk)
            digest.update(chunk)
        read = time.monotonic() - started
    peak_kib = peak_rss_kib()
    print(
        json.dumps(
            {
                "bytes": total_mib * MIB,
                "received": received,
                "expected_sha256": expected.hexdigest(),
                "remote_sha256": remote,
                "received_sha256": digest.hexdigest(),
                "write_seconds": round(wrote, 2),
                "read_seconds": round(read, 2),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "peak_rss_mib_after_write": round(peak_after_write / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
