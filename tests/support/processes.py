"""Process-tree helpers for tests that kill what `covidct up` supervises."""

from __future__ import annotations

from pathlib import Path


def children_of(parent: int) -> dict[int, str]:
    """pid -> command line of the direct children of ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            found[int(entry.name)] = cmdline
    return found


def child(parent: int, word: str) -> int:
    """The one direct child of ``parent`` whose command line contains ``word``."""
    pids = [pid for pid, cmd in children_of(parent).items() if word in cmd]
    assert len(pids) == 1, children_of(parent)
    return pids[0]
