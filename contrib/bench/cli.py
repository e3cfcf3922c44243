"""The command line of contrib/benchmark.py: options, the runs, the results."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from . import requests
from .common import (
    CREATE_FILES,
    DEFAULT_BLOCK_SIZE,
    RAW_WORKERS,
    UNTAR_FILES,
    MiB,
    log,
    parse_size,
    split_cpus,
)
from .peers import PEERS, absent_peers
from .report import (
    print_s3_table,
    print_s3_tree_table,
    print_table,
    summarize,
    summarize_s3,
    summarize_s3_tree,
)
from .run import Profiler, run_target
from .s3 import RAW_S3_WORKLOADS, S3_WORKLOADS, run_s3, split_objects
from .s3tree import S3_PEERS, TREE_WORKLOADS, absent_s3_peers, run_s3_tree
from .scale import print_scale, run_scale
from .targets import TARGETS, MegafsBeforeTarget, Seaweed
from .workloads import WORKLOADS, Inputs, build_tarball, warm_up

DESCRIPTION = "Benchmark megafs against a plain directory on the same disk."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per target (median; default 3)")
    p.add_argument("--size", type=parse_size, default=1 << 30,
                   help="size of the write/read file (default 1G)")
    p.add_argument("--workloads",
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all), or"
                        f" with --target megafs-s3 also of {','.join(S3_WORKLOADS)} (its"
                        " default: those)")
    p.add_argument("--target", default="megafs-local",
                   choices=[t for t in TARGETS if t != "plain"],
                   help="what to compare with the plain directory (default megafs-local);"
                        " megafs-s3 starts its own SeaweedFS")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"FUSE filesystems measured beside megafs, those installed of"
                        f" {','.join(PEERS)} (default: all; 'none'); nullfs runs the"
                        " small-file workloads only")
    p.add_argument("--before-src", metavar="DIR",
                   help="also run megafs-local (with s3-untar/s3-coldtar: megafs on S3) from"
                        " the sources in DIR (a checkout of the code before a change) as the"
                        " target megafs-before")
    p.add_argument("--s3-peers", default=",".join(S3_PEERS),
                   help=f"filesystems on the same SeaweedFS measured beside megafs by"
                        f" s3-untar and s3-coldtar, those installed of {','.join(S3_PEERS)}"
                        " (default: all; 'none')")
    p.add_argument("--count-requests", action="store_true",
                   help="count the FUSE requests of each small-file workload on every FUSE"
                        " target (kernel tracepoint fuse_request_send; needs root) and print"
                        " requests per operation")
    p.add_argument("--scale", action="store_true",
                   help="run the scale scenario instead of the workloads: --scale-files empty"
                        " files in one directory per 1000 (bench/scale.py)")
    p.add_argument("--scale-files", type=int, default=1_000_000, metavar="N",
                   help="files of the scale scenario (default 1,000,000)")
    p.add_argument("--dir", help="scratch directory for the plain dir and the megafs store,"
                                 " cache and mount point (default: a new dir in /var/tmp)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    p.add_argument("--bin-dir", help="where mkfs/mount/umount.megafs (and py-spy) are"
                                     " (default: next to this Python, then $PATH)")
    p.add_argument("--cache-size", type=parse_size, default=None,
                   help="megafs --cache-size (default max(4G, 2*SIZE))")
    p.add_argument("--share-cpus", action="store_true",
                   help="run SeaweedFS on the same CPUs as megafs and the raw client (default:"
                   " the server gets half of the CPUs and the clients the other half, as if"
                   " the store were another machine)")
    p.add_argument("--s3-pause", type=float, default=10.0, metavar="SECONDS",
                   help="pause after the sync that starts each timed S3 phase (default 10)")
    p.add_argument("--block-size", help="mkfs.megafs --block-size (default: mkfs's)")
    p.add_argument("--untar-tool", choices=("tar", "python"), default="tar",
                   help="extract with tar -xf (default) or Python's tarfile")
    p.add_argument("--tarball", default=os.path.join(tempfile.gettempdir(),
                   f"megafs-bench-src-py{sys.version_info[0]}{sys.version_info[1]}.tar"),
                   help="source tarball for untar (built from the stdlib if missing)")
    p.add_argument("--untar-files", type=int, default=UNTAR_FILES, metavar="N",
                   help=f"files in that tarball (default {UNTAR_FILES}; fewer for a quick check)")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="do not wait for uploads/writeback between workloads")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the data read back (the check is never timed)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip writing and deleting 3 x SIZE in DIR before the first run")
    p.add_argument("--real-kdf", action="store_true",
                   help="use the real Argon2id parameters (default: MEGAFS_INSECURE_TEST_KDF=1)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directories (default: remove them at the end)")
    p.add_argument("--profile", metavar="WORKLOAD",
                   help="run py-spy record (raw format) on the megafs daemon during WORKLOAD")
    p.add_argument("--profile-dir", default=tempfile.gettempdir(),
                   help="where --profile writes its output (default: the temp dir)")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked, with what follows from them: the workloads split into those
    against the plain directory and those against raw S3, the raw object size, the CPUs."""
    p = build_parser()
    args = p.parse_args(argv)
    s3 = args.target == "megafs-s3"
    if args.workloads is None:
        args.workloads = ",".join(S3_WORKLOADS if s3 else WORKLOADS)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    known = [*WORKLOADS, *S3_WORKLOADS] if s3 else list(WORKLOADS)
    bad = [w for w in chosen if w not in known]
    if bad or not chosen:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(known)}")
    args.workloads = [w for w in chosen if w in WORKLOADS]  # against the plain directory
    args.s3_workloads = [w for w in chosen if w in S3_WORKLOADS]  # against raw S3 requests
    args.raw_block = parse_size(args.block_size) if args.block_size else DEFAULT_BLOCK_SIZE
    args.all_cpus = os.sched_getaffinity(0)
    split = None if args.share_cpus else split_cpus()
    Seaweed.cpus, args.client_cpus = split if split else (None, None)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    peers = [] if args.peers == "none" else [x.strip() for x in args.peers.split(",") if x]
    if any(x not in PEERS for x in peers):
        p.error(f"unknown peer in {args.peers!r}; choose from {','.join(PEERS)}")
    args.peers = peers
    s3_peers = [] if args.s3_peers == "none" else [
        x.strip() for x in args.s3_peers.split(",") if x.strip()]
    if any(x not in S3_PEERS for x in s3_peers):
        p.error(f"unknown S3 peer in {args.s3_peers!r}; choose from {','.join(S3_PEERS)}")
    args.s3_peers = s3_peers
    args.tree_workloads = [w for w in args.s3_workloads if w in TREE_WORKLOADS]
    args.raw_s3_workloads = [w for w in args.s3_workloads if w in RAW_S3_WORKLOADS]
    if args.cache_size is None:
        args.cache_size = max(4 << 30, 2 * args.size)
    return args


def open_scratch(args: argparse.Namespace) -> bool:
    """Create (or take) the scratch directory args.dir; True if this run created it."""
    if args.dir is None:
        args.dir = tempfile.mkdtemp(prefix="megafs-bench-", dir="/var/tmp")
        return True
    os.makedirs(args.dir, exist_ok=True)
    args.dir = os.path.abspath(args.dir)
    return False


def remove_scratch(args: argparse.Namespace, own_dir: bool) -> None:
    if args.keep:
        return
    if own_dir:
        shutil.rmtree(args.dir, ignore_errors=True)
    else:
        for name in os.listdir(args.dir):
            if name.startswith((*(f"{t}-run" for t in (*TARGETS, *PEERS, "megafs-before")),
                                "s3tree-")):
                shutil.rmtree(os.path.join(args.dir, name), ignore_errors=True)


def run_all(args: argparse.Namespace
            ) -> tuple[dict[str, list[dict]], list[dict], list[dict[str, dict]]]:
    """Every run: (results per target of the plain-directory workloads, S3 runs against
    raw requests, S3 tree runs)."""
    # SIZE bytes are needed by the plain-directory and the raw S3 workloads only.
    size = args.size if args.workloads or args.raw_s3_workloads else 0
    st = os.statvfs(args.dir)
    need = args.runs * (3 * size + (256 << 20))
    if st.f_bavail * st.f_frsize < need:
        log(f"warning: {args.dir} has less than the ~{need >> 30} GiB free this needs")
    log(f"generating {size / MiB:.0f} MiB of random data and {CREATE_FILES} small files")
    inputs = Inputs(size)
    if "untar" in args.workloads or args.tree_workloads:
        inputs.tarball = args.tarball
        inputs.tar_files = build_tarball(args.tarball, args.untar_files)
        log(f"tarball {args.tarball}: {inputs.tar_files} files")
    if args.warmup and size:
        warm_up(args.dir, inputs.data, 3)
    profiler = Profiler(args)
    if args.count_requests and not requests.available():
        raise RuntimeError("--count-requests: no fuse_request_send tracepoint in tracefs")
    absent = absent_peers(args.peers) if args.workloads else []
    args.absent_peers = absent
    runs: dict[str, list[dict]] = {"plain": [], args.target: []}
    targets = {"plain": TARGETS["plain"], args.target: TARGETS[args.target]}
    if args.before_src and args.workloads:
        runs["megafs-before"] = []
        targets["megafs-before"] = MegafsBeforeTarget
    for name in args.peers:
        if name not in absent and args.workloads:
            runs[name] = []
            targets[name] = PEERS[name]
    args.absent_s3_peers = absent_s3_peers(args.s3_peers) if args.tree_workloads else []
    s3_runs: list[dict] = []
    tree_runs: list[dict[str, dict]] = []
    objects = split_objects(inputs.data, args.raw_block) if args.raw_s3_workloads else []
    for run in range(1, args.runs + 1):
        if args.workloads:
            for tname in runs:
                runs[tname].append(run_target(targets[tname], args.dir, run, inputs, args,
                                              profiler))
        if args.raw_s3_workloads:
            s3_runs.append(run_s3(args.dir, run, inputs, objects, args, profiler))
        if args.tree_workloads:
            tree_runs.append(run_s3_tree(args.dir, run, inputs, args))
    return runs, s3_runs, tree_runs


def make_summary(args: argparse.Namespace, runs: dict[str, list[dict]],
                 s3_runs: list[dict], tree_runs: list[dict[str, dict]] | None = None) -> dict:
    summary = summarize(runs, args) if args.workloads else {"workloads": {}, "pass": True}
    if args.raw_s3_workloads:
        summary["s3"] = summarize_s3(s3_runs, args)
        summary["pass"] = summary["pass"] and summary["s3"]["pass"]
    if args.tree_workloads:
        summary["s3_tree"] = summarize_s3_tree(tree_runs or [], args)
        summary["pass"] = summary["pass"] and summary["s3_tree"]["pass"]
    summary["config"] = {"runs": args.runs, "size": args.size, "target": args.target,
                         "dir": args.dir, "untar_tool": args.untar_tool, "settle": args.settle,
                         "warmup": args.warmup, "pythonpath": os.environ.get("PYTHONPATH"),
                         "runs_raw": runs, "s3_runs_raw": s3_runs,
                         "s3_tree_runs_raw": tree_runs, "s3_peers": args.s3_peers,
                         "before_src": args.before_src,
                         "s3_raw_object_size": args.raw_block, "s3_raw_workers": RAW_WORKERS,
                         "s3_server_cpus": sorted(Seaweed.cpus) if Seaweed.cpus else "all",
                         "s3_client_cpus": sorted(args.client_cpus) if args.client_cpus
                         else "all"}
    return summary


def report(summary: dict, args: argparse.Namespace) -> None:
    """The tables on stdout (on stderr with ``--json -``, the JSON then on stdout)."""

    def show(f):
        if args.workloads:
            print_table(summary, args, f)
        if args.raw_s3_workloads:
            print_s3_table(summary["s3"], args, f)
        if args.tree_workloads:
            print_s3_tree_table(summary["s3_tree"], args, f)

    if args.json == "-":
        show(sys.stderr)
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        show(sys.stdout)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=2)


def main(argv=None) -> int:
    """Exit status: 0 all floors met, 1 some missed, 2 error (130 interrupted)."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root: the page cache cannot be dropped")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    own_dir = open_scratch(args)
    if args.scale:
        try:
            print_scale(run_scale(os.path.join(args.dir, f"{args.target}-run-scale"), args),
                        sys.stdout)
            return 0
        finally:
            remove_scratch(args, own_dir)
    try:
        runs, s3_runs, tree_runs = run_all(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        log(f"failed: {e}")
        return 2
    finally:
        Seaweed.stop()
        remove_scratch(args, own_dir)
    summary = make_summary(args, runs, s3_runs, tree_runs)
    report(summary, args)
    return 0 if summary["pass"] else 1
