"""Medians, ratios against the floors and limits, and the printed tables."""

from __future__ import annotations

import argparse
import statistics

from .common import RAW_WORKERS, MiB
from .targets import Seaweed
from .workloads import WORKLOADS


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """Medians of every target; megafs's ratio to the plain directory against the floors,
    and to the null fs (the binding's ceiling) where it ran."""
    base, cand = "plain", args.target
    out: dict = {"workloads": {}, "info": {}, "requests": {},
                 "absent_peers": getattr(args, "absent_peers", [])}
    for name in args.workloads:
        wl = WORKLOADS[name]
        w: dict = {"unit": wl.unit, "description": wl.description, "floor": wl.floor}
        for tname, rs in runs.items():
            vals = [r["values"][name] for r in rs if name in r["values"]]
            if vals:
                w[tname] = vals
                w[f"{tname}_median"] = statistics.median(vals)
        pm, mm = w[f"{base}_median"], w[f"{cand}_median"]
        w["ratio"] = mm / pm if pm else float("nan")
        if w.get("nullfs_median"):
            w["ratio_to_null"] = mm / w["nullfs_median"]
        w["pass"] = w["ratio"] >= wl.floor
        out["workloads"][name] = w
    for tname, rs in runs.items():
        info = {}
        if any("umount_s" in r for r in rs):
            info["umount_s"] = [r.get("umount_s") for r in rs]
        if args.settle:
            info["settle_s"] = {n: [r["settle_s"][n] for r in rs if n in r["settle_s"]]
                                for n in args.workloads}
        out["info"][tname] = info
        per_op = {}
        for name in args.workloads:  # requests per operation, median over the runs
            counted = [r["requests"][name] for r in rs if name in r.get("requests", {})]
            if counted:
                per_op[name] = {"total": statistics.median(
                    sum(c["counts"].values()) / c["ops"] for c in counted),
                    "by_request": {op: statistics.median(c["counts"].get(op, 0) / c["ops"]
                                                         for c in counted)
                                   for op in sorted({o for c in counted for o in c["counts"]})},
                    "us_each": {op: statistics.median(
                        1e6 * c["seconds"].get(op, 0.0) / c["counts"][op]
                        for c in counted if c["counts"].get(op))
                        for op in sorted({o for c in counted for o in c["counts"]})}}
        if per_op:
            out["requests"][tname] = per_op
        cpu = {n: statistics.median(r["daemon_cpu_us_per_op"][n] for r in rs
                                    if n in r.get("daemon_cpu_us_per_op", {}))
               for n in args.workloads
               if any(n in r.get("daemon_cpu_us_per_op", {}) for r in rs)}
        if cpu:
            out.setdefault("daemon_cpu_us_per_op", {})[tname] = cpu
    out["pass"] = all(w["pass"] for w in out["workloads"].values())
    return out


def print_table(summary: dict, args: argparse.Namespace, f) -> None:
    cand = args.target
    targets = [t for t in summary["info"]]
    print(f"\nmegafs benchmark: {args.runs} run(s), medians; size {args.size / MiB:.0f} MiB;"
          f" dir {args.dir}", file=f)
    if summary.get("absent_peers"):
        print("not installed, not measured: " + ", ".join(summary["absent_peers"]), file=f)
    hdr = (f"{'workload':<9} {'unit':<8} " + " ".join(f"{t:>12}" for t in targets)
           + f" {'ratio':>7} {'floor':>6} {'/null':>6}  result")
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, w in summary["workloads"].items():
        cells = " ".join(f"{w[t + '_median']:>12.1f}" if t + "_median" in w else f"{'-':>12}"
                         for t in targets)
        to_null = f"{w['ratio_to_null']:>6.2f}" if "ratio_to_null" in w else f"{'-':>6}"
        print(f"{name:<9} {w['unit']:<8} {cells} {w['ratio']:>7.3f} {w['floor']:>6.2f}"
              f" {to_null}  {'PASS' if w['pass'] else 'FAIL'}", file=f)
    print(f"(ratio: {cand} / plain against the floor; /null: {cand} / nullfs)", file=f)
    cpu = summary.get("daemon_cpu_us_per_op", {})
    if cpu:
        print("daemon CPU per operation, us (median of the runs):", file=f)
        for tname, per in cpu.items():
            print(f"  {tname:<13} " + ", ".join(f"{n} {v:.0f}" for n, v in per.items()), file=f)
    for name, w in summary["workloads"].items():
        ranges = "; ".join(f"{t} {min(w[t]):.0f}-{max(w[t]):.0f}" for t in targets if t in w)
        print(f"  {name} ranges: {ranges}", file=f)
    for tname, per_op in summary.get("requests", {}).items():
        print(f"{tname}: FUSE requests per operation (median of the runs), each x the"
              " median time from sent to answered", file=f)
        for name, r in per_op.items():
            parts = ", ".join(f"{op} {n:.2f} x {r['us_each'][op]:.0f} us"
                              for op, n in r["by_request"].items() if n >= 0.005)
            print(f"  {name:<9} {r['total']:6.2f}  ({parts})", file=f)
    for tname, info in summary["info"].items():
        if "umount_s" in info:
            ts = ", ".join(f"{t:.2f}" for t in info["umount_s"])
            print(f"{tname} umount.megafs seconds per run: {ts}", file=f)
        for n, ts in info.get("settle_s", {}).items():
            if tname == cand:
                print(f"{tname} flush after {n:<9} seconds per run: "
                      + ", ".join(f"{t:.2f}" for t in ts), file=f)


def summarize_s3(runs: list[dict], args: argparse.Namespace) -> dict:
    size = args.size
    out: dict = {"workloads": {}, "info": {}}
    if "s3-copy" in args.s3_workloads:
        raw = [r["raw_put_s"] for r in runs]
        meg = [r["copy_s"] for r in runs]
        ratio = statistics.median(meg) / statistics.median(raw)
        out["workloads"]["s3-copy"] = {
            "unit": "s", "raw_s3": raw, "megafs-s3": meg, "raw_s3_median": statistics.median(raw),
            "megafs-s3_median": statistics.median(meg), "ratio": ratio, "limit": 1.3,
            "pass": ratio <= 1.3}
        out["info"]["write_s"] = [r["write_s"] for r in runs]
        out["info"]["umount_s"] = [r["umount_s"] for r in runs]
        # Each run's copy against the raw PUTs of the same run: a stricter view than the
        # ratio of the medians when the server's speed drifts between runs.
        out["info"]["paired_ratios"] = [m / r for m, r in zip(meg, raw, strict=True)]
    if "s3-coldread" in args.s3_workloads:
        raw = [size / r["raw_get_s"] / 1e6 for r in runs]
        meg = [size / r["coldread_s"] / 1e6 for r in runs]
        out["workloads"]["s3-coldread"] = {
            "unit": "MB/s", "raw_s3": raw, "megafs-s3": meg,
            "raw_s3_median": statistics.median(raw), "megafs-s3_median": statistics.median(meg),
            "ratio": statistics.median(meg) / statistics.median(raw), "limit": None,
            "pass": True}
    out["pass"] = all(w["pass"] for w in out["workloads"].values())
    return out


def print_s3_table(summary: dict, args: argparse.Namespace, f) -> None:
    block = args.raw_block
    print(f"\nmegafs on S3 (SeaweedFS weed mini on 127.0.0.1): {args.runs} run(s), medians;"
          f" size {args.size / MiB:.0f} MiB; raw baseline: {-(-args.size // block)} objects of"
          f" {block // 1024} KiB, {RAW_WORKERS} parallel requests", file=f)
    if args.client_cpus is not None:
        print(f"SeaweedFS on CPUs {sorted(Seaweed.cpus)}; megafs, its writer and the raw client"
              f" on CPUs {sorted(args.client_cpus)} (--share-cpus: all share all)", file=f)
    hdr = (f"{'workload':<12} {'unit':<5} {'raw S3':>10} {'megafs-s3':>10} {'ratio':>7}"
           f" {'limit':>7}  result")
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, w in summary["workloads"].items():
        limit = f"<={w['limit']:.2f}" if w["limit"] else "-"
        result = ("PASS" if w["pass"] else "FAIL") if w["limit"] else "(reported)"
        print(f"{name:<12} {w['unit']:<5} {w['raw_s3_median']:>10.2f}"
              f" {w['megafs-s3_median']:>10.2f} {w['ratio']:>7.3f} {limit:>7}  {result}",
              file=f)
    info = summary["info"]
    if "write_s" in info:
        print("megafs-s3 s3-copy seconds per run (write + umount.megafs): " + ", ".join(
            f"{w:.2f} + {u:.2f}" for w, u in zip(info["write_s"], info["umount_s"], strict=True)),
            file=f)
    if "paired_ratios" in info:
        pairs = info["paired_ratios"]
        print("s3-copy per-run ratios (copy / raw PUTs of the same run): " + ", ".join(
            f"{p:.3f}" for p in pairs) + f"; median {statistics.median(pairs):.3f}", file=f)
    if "s3-copy" in summary["workloads"]:
        w = summary["workloads"]["s3-copy"]
        print("s3-copy MB/s (median): raw PUT {:.1f}, megafs copy+umount {:.1f}".format(
            args.size / w["raw_s3_median"] / 1e6, args.size / w["megafs-s3_median"] / 1e6),
            file=f)
