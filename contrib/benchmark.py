#!/usr/bin/env python3
"""Benchmark megafs against a plain directory on the same disk.

Runs the same workloads on a plain directory (the baseline) and on a megafs
mount, in the same run, and prints the medians of both with their ratio
(megafs / plain) against the floors the project promises:

    write   1 GiB of incompressible data, 1 MiB writes, one final fsync   >= 0.8
    read    the same file after dropping the kernel page cache
            (for megafs the blocks are in the local cache)                >= 0.4
    create  3000 new 4 KiB files in one directory (no fsync)             >= 0.1
    untar   extract a 2600-file source tarball with tar -xf              >= 0.12

and the small-file workloads after "create": stat, read (readsmall) and delete
those files with the kernel's caches dropped, rm -r of the untarred tree (rmtree),
and 1000 editor saves (save: write 4 KiB, fsync, rename over the file).

Beside megafs, the same run measures the null pyfuse3 filesystem (bench/nullfs.py:
megafs's mount options and replies, in memory: the binding's ceiling; small-file
workloads only) and the installed peers gocryptfs, securefs and CryFS (``--peers``;
absent ones are named). ``--before-src DIR`` adds megafs from another checkout.
``--count-requests`` counts the FUSE requests per operation (kernel tracepoints
fuse_request_send/end), and the daemon CPU per operation of every FUSE target is
printed. ``--scale [--scale-files N]`` runs the scale scenario instead
(bench/scale.py: N files in N/1000 directories; mount times, peak RSS, find, the
bytes of one chmod, the snapshot size, fsck).

The tarball is built once (in the temp dir) from the running Python's stdlib
.py files, sorted, topped up with its site-packages' .py files if the stdlib
has fewer than 2600. Workloads run in that order, each in the same mount.

Each megafs run gets a fresh ``mkfs.megafs`` + ``mount.megafs``; after the
workloads it is unmounted with ``umount.megafs`` and the time that takes
(the remaining uploads) is reported for information. Between workloads both
targets are settled (``sync``; for megafs also a flush of all uploads through
the control channel) so that one workload's background uploads do not slow the
next one down; the flush time is reported too (``--no-settle`` turns this off).

Before the first run, 3 x SIZE is written and deleted (``--no-warmup``): on
thin-provisioned virtual disks first writes are much slower. Scratch
directories are deleted only at the end, as mass deletions slow down later file
creation on some filesystems. With MEGAFS_INSECURE_TEST_KDF=1 unless
``--real-kdf``; the passphrase is $MEGAFS_PASSPHRASE or a fixed one.
``--profile WORKLOAD`` runs ``py-spy record --format raw`` on the daemon during
that workload. Exit status: 0 all floors met, 1 some missed, 2 error.

S3 (``--target megafs-s3``): the store is a bucket of a SeaweedFS server (``weed
mini`` on 127.0.0.1) that the benchmark starts and stops itself, with the code of
contrib/seaweed.py (shared with the tests). Its own workloads compare megafs with raw
S3 requests against the same server, in the same run, on the same SIZE bytes:

    s3-copy      write SIZE into a fresh mount (1 MiB writes), then umount.megafs;
                 against PUTs of SIZE cut into objects of the block size by 8
                 parallel workers                                     time <= 1.3x
    s3-coldread  read that file after remounting with an empty cache dir (and a
                 dropped page cache); against 8 parallel GETs of those objects
                                                                    (reported only)

and, on a source tree (bench/s3tree.py; issue 15), megafs beside megafs-before
(``--before-src``) and the installed peers of ``--s3-peers`` (rclone crypt with
``--vfs-cache-mode full``, S3QL), all on the same server in the same run:

    s3-untar     untar the 2600-file tarball of "untar" into a fresh mount, then unmount
                 until everything is uploaded; seconds, and the PUT and GET requests
                 the server counted (its Prometheus counter, started with -metricsPort)
    s3-coldtar   remount with an empty cache dir, tar -c the tree into a pipe; files/s
                 and requests                          (both reported, with the goals)

Unless ``--share-cpus`` is given, SeaweedFS runs on one half of the CPUs and
megafs, the process writing into it and the raw client on the other half, as if
the store were another machine: on a small machine the server otherwise competes
with the client for the same cores, and every client CPU second slows the server.

The raw requests go through megafs's own S3 client (``S3Backend``: signed,
SHA-256 of every body); objects and stores are deleted after each run. The two
timed phases of a run alternate in order, and each starts after ``sync`` and a
pause (``--s3-pause``, 10 s). Without the pause, whichever phase came first in a
run was faster, for both sides (docs/performance.md); the likely cause is memory
the earlier phase freed, which this virtual machine can reuse cheaply only until
free page reporting returns it to the host. With
``--target megafs-s3`` the default workloads are the s3-* ones; the plain-directory
workloads (write, read, ...) also run on an S3-backed mount when named.

Needs root (to drop the page cache) and FUSE. Examples::

    sudo .venv/bin/python contrib/benchmark.py --runs 3
    .venv/bin/python contrib/benchmark.py --workloads write,read --size 256M --json out.json
    .venv/bin/python contrib/benchmark.py --target megafs-s3 --size 1G --runs 3
    .venv/bin/python contrib/benchmark.py --target megafs-s3 --workloads s3-untar,s3-coldtar \
        --before-src /tmp/megafs-before --runs 3

Targets are pluggable (see ``TARGETS`` in bench/targets.py): the baseline is always
``plain``; other stores subclass :class:`MegafsTarget`. The code is in contrib/bench/.
"""

import sys

from bench.cli import main  # contrib/bench/, next to this script

if __name__ == "__main__":
    sys.exit(main())
