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


#: The issue's targets for megafs against megafs-before, by field: (how, factor).
TREE_GOALS = (("untar requests", "untar_req", "le", 0.1),
              ("untar + unmount time", "untar_s", "le", 0.5),
              ("cold tar rate", "coldtar_files_s", "ge", 2.0))


def _requests_median(rs: list[dict], key: str) -> dict[str, float]:
    kinds = sorted({k for r in rs for k in r.get(key, {})})
    return {k: statistics.median(r.get(key, {}).get(k, 0) for r in rs) for k in kinds}


def summarize_s3_tree(runs: list[dict[str, dict]], args: argparse.Namespace) -> dict:
    """Per target: medians and ranges of the s3-untar and s3-coldtar figures, and the
    median request counts by type; then the issue's targets (megafs against
    megafs-before: 10x fewer untar requests, half the time, twice the cold tar rate;
    ahead of every peer)."""
    names = list(dict.fromkeys(n for run in runs for n in run))
    out: dict = {"targets": {}, "absent_peers": getattr(args, "absent_s3_peers", []),
                 "goals": []}
    for name in names:
        rs = [run[name] for run in runs if name in run]
        t: dict = {}
        for key in ("untar_s", "untar_write_s", "untar_flush_s", "coldtar_files_s",
                    "untar_cpu_s", "coldtar_cpu_s", "cold_mount_s"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                t[key] = vals
                t[f"{key}_median"] = statistics.median(vals)
        for key in ("untar_requests", "coldtar_requests"):
            if any(key in r for r in rs):
                t[key] = [r.get(key, {}) for r in rs]
                t[f"{key}_median"] = _requests_median(rs, key)
        t["untar_req_median"] = statistics.median(
            sum(r.get("untar_requests", {}).values()) for r in rs)
        out["targets"][name] = t
    meg, before = out["targets"].get("megafs-s3"), out["targets"].get("megafs-before")
    if meg and before:
        for label, key, how, factor in TREE_GOALS:
            if f"{key}_median" not in meg or f"{key}_median" not in before:
                continue
            m, b = meg[f"{key}_median"], before[f"{key}_median"]
            ok = m <= b * factor if how == "le" else m >= b * factor
            out["goals"].append({"goal": f"{label}: {'<=' if how == 'le' else '>='}"
                                 f" {factor:g} x megafs-before", "megafs": m, "before": b,
                                 "pass": ok})
    if meg:
        for name, t in out["targets"].items():
            if name in ("megafs-s3", "megafs-before"):
                continue
            for label, key, better in (("untar + unmount time", "untar_s", "lower"),
                                       ("cold tar rate", "coldtar_files_s", "higher")):
                if f"{key}_median" in meg and f"{key}_median" in t:
                    m, p = meg[f"{key}_median"], t[f"{key}_median"]
                    out["goals"].append({"goal": f"{label}: ahead of {name}", "megafs": m,
                                         "before": p,
                                         "pass": m < p if better == "lower" else m > p})
    out["pass"] = all(g["pass"] for g in out["goals"])
    return out


def _req(counts: dict[str, float]) -> tuple[str, str, str]:
    """(PUT, GET, the others) of median request counts."""
    other = sum(v for k, v in counts.items() if k not in ("PUT", "GET"))
    return (f"{counts.get('PUT', 0):.0f}", f"{counts.get('GET', 0):.0f}", f"{other:.0f}")


def _cell(t: dict, key: str, fmt: str) -> str:
    """"median [min-max]" of one figure, right-aligned."""
    if f"{key}_median" not in t:
        return f"{'-':>22}"
    v = t[key]
    return f"{t[key + '_median']:{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]".rjust(22)


def print_s3_tree_table(summary: dict, args: argparse.Namespace, f) -> None:
    print(f"\nsource tree on S3 (SeaweedFS on 127.0.0.1, the same server for all):"
          f" {args.runs} run(s), medians [ranges]; requests counted by the server"
          " (SeaweedFS_s3_request_total; GET includes HEAD)", file=f)
    if summary.get("absent_peers"):
        print("not installed, not measured: " + ", ".join(summary["absent_peers"]), file=f)
    hdr = (f"{'target':<14} {'untar+unmount s':>22} {'PUT':>6} {'GET':>6} {'other':>6}"
           f"  {'cold tar files/s':>22} {'GET':>6} {'other':>6}")
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, t in summary["targets"].items():
        up, ug, uo = _req(t.get("untar_requests_median", {}))
        _, cg, co = _req(t.get("coldtar_requests_median", {}))
        if "coldtar_requests_median" not in t:
            cg = co = "-"
        print(f"{name:<14} {_cell(t, 'untar_s', '.2f')} {up:>6} {ug:>6} {uo:>6}"
              f"  {_cell(t, 'coldtar_files_s', '.0f')} {cg:>6} {co:>6}", file=f)
    for name, t in summary["targets"].items():
        parts = []
        if "untar_s" in t:
            parts.append("untar s (tar + unmount) " + ", ".join(
                f"{a:.2f} ({w:.2f} + {u:.2f})" for a, w, u in
                zip(t["untar_s"], t["untar_write_s"], t["untar_flush_s"], strict=True)))
        for key, label in (("untar_requests", "untar requests"),
                           ("coldtar_requests", "cold tar requests")):
            if key in t:
                parts.append(f"{label} " + "; ".join(
                    " ".join(f"{k} {v}" for k, v in c.items()) for c in t[key]))
        if "cold_mount_s" in t:
            parts.append("cold mount s " + ", ".join(f"{v:.2f}" for v in t["cold_mount_s"]))
        print(f"  {name}: " + " | ".join(parts), file=f)
    for g in summary["goals"]:
        print(f"  {g['goal']:<48} megafs {g['megafs']:>9.2f} vs {g['before']:>9.2f}"
              f"  {'met' if g['pass'] else 'MISSED'}", file=f)
