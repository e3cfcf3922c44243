#!/usr/bin/env bash
# Developer entry point (README's two commands):
#   ./dev.sh mount [STORE_DIR [MOUNTPOINT]]   set up, create a local store if needed, mount it
#   ./dev.sh test [PYTEST_ARGS...]            set up, lint, run the whole test suite
# Both install what they need: Debian packages fuse3, libfuse3-dev, pkg-config
# (with apt-get, via sudo when not root) and a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

setup() {
    local need=()
    local pkgs=(fuse3 libfuse3-dev pkg-config)
    # The test suite also drives these tools (man pages, rsync round trips, git,
    # sqlite3, xattr and ACL utilities, shellcheck of the bash completion), headless
    # Chromium for the download page's tests, Node.js to rebuild the page (web/) and
    # rclone, a peer of the benchmark whose use of it is tested.
    [ "${1:-}" = test ] && pkgs+=(man-db groff-base rsync git sqlite3 attr acl util-linux
                                  shellcheck chromium chromium-driver rclone)
    # npm comes with Node.js from elsewhere (e.g. NodeSource): Debian's would conflict.
    [ "${1:-}" = test ] && ! command -v npm >/dev/null && pkgs+=(nodejs npm)
    for pkg in "${pkgs[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        local sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)
        echo "dev.sh: installing ${need[*]}" >&2
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
        # compat: a plain path in a .pth file, no import hook that slows every start
        .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' \
            --config-settings editable_mode=compat
        touch .venv/.installed
    fi
}

case "${1:-}" in
mount)
    setup
    store=$(realpath -m "${2:-$here/megafs-demo/store}")
    mnt=$(realpath -m "${3:-$here/megafs-demo/mnt}")
    mkdir -p "$store" "$mnt"
    if [ ! -e "$store/superblock" ]; then
        # First use: ask once (twice to confirm) for both mkfs and the mount.
        if [ -z "${MEGAFS_PASSPHRASE+set}" ] && [ -t 0 ]; then
            read -rs -p "New passphrase: " MEGAFS_PASSPHRASE; echo >&2
            read -rs -p "Repeat passphrase: " again; echo >&2
            if [ "$MEGAFS_PASSPHRASE" != "$again" ]; then
                echo "dev.sh: passphrases do not match" >&2
                exit 2
            fi
            export MEGAFS_PASSPHRASE
        fi
        .venv/bin/mkfs.megafs "local://$store"
    fi
    .venv/bin/mount.megafs "local://$store" "$mnt"
    echo "megafs: local://$store is mounted on $mnt"
    echo "        unmount with: .venv/bin/umount.megafs $mnt"
    ;;
test)
    shift
    setup test
    .venv/bin/ruff check megafs tests contrib tools
    # The tests mostly wait (on mounts, servers, subprocesses), so they run in one worker
    # process per core, each test file in one worker; -n 0 runs them in this process.
    exec .venv/bin/pytest -n "${MEGAFS_TEST_WORKERS:-$(nproc)}" --dist loadfile "$@"
    ;;
*)
    echo "usage: $0 mount [STORE_DIR [MOUNTPOINT]] | test [PYTEST_ARGS...]" >&2
    exit 2
    ;;
esac
