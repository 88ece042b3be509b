"""bench/results/raw.tsv -> the markdown table in bench/RESULTS.md (median per cell)."""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAMES = {
    "floor1": "floor, 1 psql session",
    "floor2": "floor, 2 psql sessions",
    "tool1": "tenantctl migrate K=1",
    "tool2": "tenantctl migrate K=2",
    "dj_standard": "django-tenants standard",
    "dj_mp": "django-tenants multiprocessing (2 procs)",
    "naive": "naive alembic loop",
}


def main(path: str) -> None:
    secs: dict[tuple[str, int], list[float]] = defaultdict(list)
    rss: dict[tuple[str, int], list[int]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        _, case, n, s, r = line.split("\t")
        if s != "-":
            secs[case, int(n)].append(float(s))
        if r != "-":
            rss[case, int(n)].append(int(r))
    ns = sorted({n for _, n in secs})
    print("| method | " + " | ".join(f"N={n}: s (ms/tenant, x floor1)" for n in ns) + " |")
    print("|---|" + "---:|" * len(ns))
    for case, name in NAMES.items():
        cells = []
        for n in ns:
            vals = secs.get((case, n))
            floor = statistics.median(secs[("floor1", n)]) if secs.get(("floor1", n)) else None
            if not vals:
                cells.append("—")
                continue
            med = statistics.median(vals)
            runs = ""
            if len(vals) > 1:
                runs = f", {len(vals)} runs: " + "/".join(f"{v:.1f}" for v in vals)
            ratio = f", {med / floor:.2f}x" if floor else ""
            cells.append(f"{med:.2f} ({med / n * 1000:.1f} ms{ratio}{runs})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for case in ("tool1", "tool2"):
        for n in ns:
            if rss.get((case, n)):
                mib = max(rss[case, n]) / 1024
                print(f"peak RSS {NAMES[case]} N={n}: {mib:.1f} MiB (largest process)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "results" / "raw.tsv"))
