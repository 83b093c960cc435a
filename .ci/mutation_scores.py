"""Mutation scores per module, from mutmut's results (run after `mutmut run`).

Equivalent mutants (a change no test can tell apart, e.g. a log message's wording) are listed
with the reason in .ci/mutation-equivalent.txt and left out of the score; a mutant that makes the
tests time out counts as caught. Exit status 1 when a module is under the target.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

TARGET = 0.90
HERE = Path(__file__).resolve().parent


def equivalent() -> dict[str, str]:
    path = HERE / "mutation-equivalent.txt"
    if not path.exists():
        return {}
    listed = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            listed[name] = why.strip()
    return listed


def main() -> int:
    mutmut = str(Path(sys.executable).parent / "mutmut")
    done = subprocess.run(
        [mutmut, "results", "--all=true"], capture_output=True, text=True, check=True
    )
    skip = equivalent()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in done.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name or status == "not checked":
            continue
        module = name.split(".x_", 1)[0].split(".xǁ", 1)[0]
        by_module[module]["equivalent" if name in skip else status] += 1
    failed = False
    print(f"{'module':<28} {'killed':>7} {'survived':>9} {'other':>6} {'equiv.':>7} {'score':>7}")
    for module, counts in sorted(by_module.items()):
        # a mutant that hangs the tests, or crashes their process (ctypes), is caught
        killed = counts["killed"] + counts["timeout"] + counts["segfault"]
        survived = counts["survived"]
        other = sum(
            v
            for k, v in counts.items()
            if k not in ("killed", "timeout", "segfault", "survived", "equivalent")
        )
        scored = killed + survived + other
        score = killed / scored if scored else 1.0
        failed |= score < TARGET
        print(
            f"{module:<28} {killed:>7} {survived:>9} {other:>6} {counts['equivalent']:>7} "
            f"{score:>7.1%}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
