"""Medians, ratios against the floors and limits, and the printed tables."""

from __future__ import annotations

import argparse
import statistics

from .common import RAW_WORKERS, MiB
from .targets import Seaweed
from .workloads import WORKLOADS


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    base, cand = "plain", args.target
    out: dict = {"workloads": {}, "info": {}}
    for name in args.workloads:
        wl = WORKLOADS[name]
        p = [r["values"][name] for r in runs[base]]
        m = [r["values"][name] for r in runs[cand]]
        pm, mm = statistics.median(p), statistics.median(m)
        ratio = mm / pm if pm else float("nan")
        out["workloads"][name] = {
            "unit": wl.unit, "description": wl.description, base: p, cand: m,
            f"{base}_median": pm, f"{cand}_median": mm, "ratio": ratio, "floor": wl.floor,
            "pass": ratio >= wl.floor}
    for tname, rs in runs.items():
        info = {}
        if any("umount_s" in r for r in rs):
            info["umount_s"] = [r.get("umount_s") for r in rs]
        if args.settle:
            info["settle_s"] = {n: [r["settle_s"][n] for r in rs] for n in args.workloads}
        out["info"][tname] = info
    out["pass"] = all(w["pass"] for w in out["workloads"].values())
    return out


def print_table(summary: dict, args: argparse.Namespace, f) -> None:
    cand = args.target
    print(f"\nmegafs benchmark: {args.runs} run(s), medians; size {args.size / MiB:.0f} MiB;"
          f" dir {args.dir}", file=f)
    hdr = f"{'workload':<8} {'unit':<8} {'plain':>10} {cand:>13} {'ratio':>7} {'floor':>6}  result"
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, w in summary["workloads"].items():
        print(f"{name:<8} {w['unit']:<8} {w['plain_median']:>10.1f} {w[cand + '_median']:>13.1f}"
              f" {w['ratio']:>7.3f} {w['floor']:>6.2f}  {'PASS' if w['pass'] else 'FAIL'}",
              file=f)
    for tname, info in summary["info"].items():
        if "umount_s" in info:
            ts = ", ".join(f"{t:.2f}" for t in info["umount_s"])
            print(f"{tname} umount.megafs seconds per run: {ts}", file=f)
        for n, ts in info.get("settle_s", {}).items():
            if tname != "plain":
                print(f"{tname} flush after {n:<7} seconds per run: "
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
