#!/usr/bin/env bash
# build-image.sh -- build snapd's OCI image (deploy/image/Containerfile) with podman, from base
# images made on this machine from Debian's packages: no container registry is reached.
#
# Usage: see usage() below or run with --help.
#
# Output contract: messages go to stderr; the LAST line of stdout is the image's tag
# (localhost/gpu-snapd:<version>-<git short sha>[-dirty]), or, with --run-flags, the podman
# flags that run a container here, one per line.

set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# CRIU's version, tarball, checksum, build dependencies, detect_mirror, fetch_tarball, log, die:
# the image's CRIU is built exactly as install-criu.sh builds the host's.
# shellcheck source=install-criu.sh
source "$root/scripts/install-criu.sh"

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
IMAGE=localhost/gpu-snapd
BASE_IMAGE=localhost/gpu-snapd-base
BUILD_BASE_IMAGE=localhost/gpu-snapd-build-base
RELEASE="${SNAPD_IMAGE_RELEASE:-bookworm}"    # Debian release of the bases (Python >= 3.11)
CACHE="${SNAPD_IMAGE_CACHE:-/var/cache/gpu-snapd-image}"
# What the final image runs on: Python and the CA certificates the remote tier's TLS needs.
RUNTIME_PACKAGES=(python3 ca-certificates)
# What builds it: CRIU's build dependencies (install-criu.sh) and venv for the snapd install.
BUILD_PACKAGES=("${RUNTIME_PACKAGES[@]}" "${BUILD_DEPS[@]}" python3-venv)
# Left out of both bases (not needed to run or build; ~60 MB).
PRUNE=(usr/share/doc usr/share/man usr/share/info usr/share/locale var/lib/apt/lists var/cache/apt)
# Exit status when podman cannot run a container on this machine (the reason is printed).
EXIT_NO_CONTAINERS=3

usage() {
    cat <<EOF
Usage: $prog [--release NAME] [--refresh] [--run-flags] [--help]

Build snapd's OCI image from deploy/image/Containerfile with podman (as root) and print its tag
as the last line of stdout:
  $IMAGE:<version>-<git short sha>   (-dirty appended when the checkout has changes)
  $IMAGE:<version>                   (the same image; <version> is pyproject.toml's)

The build reaches no registry. Its two bases are made here with debootstrap from Debian's
packages (Debian <release>, security updates applied) and imported with podman import:
  $BASE_IMAGE:<release>-<key>         Python, CA certificates: the final stage
  $BUILD_BASE_IMAGE:<release>-<key>   + CRIU's build dependencies, python3-venv
<key> hashes the release and the package lists; a base whose tag exists is reused. The wheels
(the checkout's and its dependencies', for the base's Python and glibc) are made on this host
with pip and its configuration, and cached (the checkout's by its files, the others by their
requirements); CRIU's source tarball comes through install-criu.sh (same tarball, same
sha256); podman builds with --network none, and its layer cache makes a rebuild of an
unchanged checkout take seconds.

Options:
  --release NAME   Debian release of the bases (default: $RELEASE; Python >= 3.11 needed)
  --refresh        make the bases again and download the dependencies' wheels again (Debian's
                   latest security updates, the newest releases the requirements allow)
  --run-flags      only print the podman flags that run a container here (making the runtime
                   base if needed), one argument per line; exit $EXIT_NO_CONTAINERS with the reason if none do
  -h, --help       show this help

Environment:
  SNAPD_IMAGE_CACHE    debootstrap's .deb cache and the wheels (default /var/cache/gpu-snapd-image)
  SNAPD_IMAGE_MIRROR   Debian mirror, .../debian (default: SNAPD_CRIU_MIRROR, else this host's apt
                       sources); security updates come from .../debian-security beside it
  PYTHON               Python whose pip makes the wheels (default: the checkout's .venv, else python3)

Exit status: 0 built, 1 failed, 2 bad usage, $EXIT_NO_CONTAINERS podman cannot run containers here.
EOF
}

# ---------------------------------------------------------------------------
# Base images
# ---------------------------------------------------------------------------
base_key() {
    printf '%s\n' "$RELEASE" "${RUNTIME_PACKAGES[*]}" "${BUILD_PACKAGES[*]}" "${PRUNE[*]}" |
        sha256sum | cut -c1-12
}

mirror() {
    local m="${SNAPD_IMAGE_MIRROR:-${SNAPD_CRIU_MIRROR:-}}"
    [[ -n "$m" ]] || m="$(detect_mirror || true)"
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# in_chroot DIR COMMAND... : run COMMAND in DIR with /proc mounted, the host's resolver, the
# .deb cache debootstrap fills and dpkg without fsync (the root file system is thrown away if
# this fails); output to DIR.log.
in_chroot() {
    local dir="$1" rc=0; shift
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    echo force-unsafe-io >"$dir/etc/dpkg/dpkg.cfg.d/build-image-unsafe-io"
    mount -t proc proc "$dir/proc"
    mkdir -p "$CACHE/debs/partial"
    mount --bind "$CACHE/debs" "$dir/var/cache/apt/archives"
    DEBIAN_FRONTEND=noninteractive chroot "$dir" "$@" >>"$dir.log" 2>&1 || rc=$?
    umount "$dir/var/cache/apt/archives" "$dir/proc"
    rm -f "$dir/etc/dpkg/dpkg.cfg.d/build-image-unsafe-io"
    : >"$dir/etc/resolv.conf"
    (( rc == 0 )) || { tail -n 20 "$dir.log" >&2; die "in $dir: $* failed; log: $dir.log"; }
}

# make_runtime_rootfs DIR : Debian $RELEASE (minbase) with RUNTIME_PACKAGES, upgraded from the
# release's -updates and -security suites; apt's package lists are kept for make_build_rootfs.
make_runtime_rootfs() {
    local dir="$1" m
    m="$(mirror)"
    log "debootstrap $RELEASE from $m into $dir (+ ${RUNTIME_PACKAGES[*]})"
    mkdir -p "$CACHE/debs"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${RUNTIME_PACKAGES[*]}")" --cache-dir="$CACHE/debs" \
        "$RELEASE" "$dir" "$m" >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; die "debootstrap failed; log: $dir.log"; }
    printf 'deb %s %s main\n' "$m" "$RELEASE" "$m" "$RELEASE-updates" "${m%/debian}/debian-security" "$RELEASE-security" \
        >"$dir/etc/apt/sources.list"
    in_chroot "$dir" apt-get -q update
    in_chroot "$dir" apt-get -y -q upgrade
}

# make_build_rootfs RUNTIME DIR : a copy of the runtime root file system with BUILD_PACKAGES (the
# same Python, from the same package lists).
make_build_rootfs() {
    log "adding CRIU's build dependencies and python3-venv in $2"
    cp -a "$1" "$2"
    in_chroot "$2" apt-get -y -q install --no-install-recommends "${BUILD_PACKAGES[@]}"
}

# prune DIR : without apt's caches and lists, docs, manual pages, translations.
prune() {
    local p; for p in "${PRUNE[@]}"; do rm -rf "${1:?}/$p"; mkdir -p "$1/$p"; done
}

# import_rootfs DIR TAG : the directory as a one-layer image.
import_rootfs() {
    tar --numeric-owner --xattrs -C "$1" -c . |
        podman import --change 'CMD ["/bin/bash"]' - "$2" >/dev/null || die "podman import of $1 as $2 failed"
    log "made base image $2 ($(podman image inspect --format '{{.Size}}' "$2" | numfmt --to=iec))"
}

# remove_work : unmount what in_chroot mounted in $work, then remove it (only when nothing is
# mounted there any more: the .deb cache is bound into it).
remove_work() {
    local m
    for m in "$work"/*/var/cache/apt/archives "$work"/*/proc; do
        if mountpoint -q "$m"; then umount "$m" || true; fi
    done
    if grep -qF " $work/" /proc/self/mounts; then log "left $work: still mounted"; else rm -rf "$work"; fi
}

# ensure_bases [runtime] : make the bases (only the runtime one with "runtime") when one is
# missing or with --refresh. Both are made together, so that they hold the same Python.
ensure_bases() {
    local key only="${1:-}"
    key="$(base_key)"
    BASE="$BASE_IMAGE:$RELEASE-$key"
    BUILD_BASE="$BUILD_BASE_IMAGE:$RELEASE-$key"
    if (( ! refresh )) && podman image exists "$BASE" && { [[ "$only" == runtime ]] || podman image exists "$BUILD_BASE"; }; then
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$CACHE"
    work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap remove_work EXIT
    local t0=$SECONDS
    make_runtime_rootfs "$work/runtime"
    if [[ "$only" != runtime ]]; then
        make_build_rootfs "$work/runtime" "$work/build"
        prune "$work/build"
        import_rootfs "$work/build" "$BUILD_BASE"
    fi
    prune "$work/runtime"
    import_rootfs "$work/runtime" "$BASE"
    remove_work; trap - EXIT
    log "bases made in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------
# Running containers here
# ---------------------------------------------------------------------------
# run_flags : print the first set of podman flags that runs a container of the runtime base
# here, one argument per line; exit EXIT_NO_CONTAINERS with every attempt's error if none does.
# Podman's defaults come first. The others answer what a sandboxed VM refuses: crun does not
# run on hybrid cgroup v1/v2 hosts ("cgroups in hybrid mode not supported"), runc does; and
# without CAP_SYS_RESOURCE the default rlimits (nofile 1048576) cannot be set, so the caller's
# hard nofile is passed, and nproc 32768 (podman lowers its own RLIMIT_NPROC to that at start).
run_flags() {
    local hn nproc
    hn="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
    if [[ "$nproc" == unlimited ]] || (( nproc > 32768 )); then nproc=32768; fi
    local limits="--ulimit nofile=$hn:$hn --ulimit nproc=$nproc:$nproc"
    local candidates=("" "--runtime runc" "$limits" "--runtime runc $limits") c out errors=""
    for c in "${candidates[@]}"; do
        # shellcheck disable=SC2086  # word splitting of the flags is meant
        if out="$(podman run --rm --network none $c "$BASE" true 2>&1)"; then
            [[ -n "$c" ]] && printf '%s\n' $c
            return 0
        fi
        errors+=$'\n'"  podman run --rm --network none ${c:+$c }$BASE true: $(tail -n 1 <<<"$out")"
    done
    printf '%s: podman cannot run a container here; tried:%s\n' "$prog" "$errors" >&2
    exit "$EXIT_NO_CONTAINERS"
}

# ---------------------------------------------------------------------------
# Build context: install-criu.sh, CRIU's tarball, wheels, config
# ---------------------------------------------------------------------------
# The base's Python and glibc versions, as "3.11 2.36", read from the runtime base.
base_versions() {
    podman run --rm --network none "${RUN_FLAGS[@]}" "$BASE" python3 -c \
        'import os, sys; print("%d.%d" % sys.version_info[:2], os.confstr("CS_GNU_LIBC_VERSION").split()[1])'
}

# cached DIR KIND KEY COMMAND... : fill DIR with the files COMMAND writes into the directory
# named by its last argument, kept under $CACHE/KIND-KEY; the 3 newest of a KIND are kept.
cached() {
    local dir="$1" kind="$2" key="$3"; shift 3
    local keep="$CACHE/wheels/$kind-$key"
    if [[ ! -d "$keep" ]]; then
        mkdir -p "$CACHE/wheels"
        local fresh; fresh="$(mktemp -d "$CACHE/wheels/.new.XXXXXX")"
        "$@" "$fresh" || { rm -rf "$fresh"; die "making the $kind wheels failed"; }
        if ! mv -T "$fresh" "$keep" 2>/dev/null; then  # another build made the same KEY meanwhile
            rm -rf "$fresh"
            [[ -d "$keep" ]] || die "cannot keep the $kind wheels as $keep"
        fi
        ls -dt "$CACHE/wheels/$kind-"* | tail -n +4 | xargs -r rm -rf
    fi
    mkdir -p "$dir"
    cp -a "$keep"/. "$dir"/
}

# local_wheels SRC OUT : the wheels of the checkout's distributions in SRC (the root project,
# and client/ when it has its own). SOURCE_DATE_EPOCH stamps every member of a wheel with one
# time (1980-01-01, zip's first): the same package files give the same wheel, whatever the
# commit, and podman's layer cache holds across commits that leave them alone.
local_wheels() {
    local project
    for project in "$1" "$1/client"; do
        [[ -f "$project/pyproject.toml" ]] || continue
        SOURCE_DATE_EPOCH=315532800 "${PIP[@]}" wheel -q --no-deps \
            --wheel-dir "$2" "$project" >&2 || return 1
    done
}

# dependency_wheels PY GLIBC LOCAL OUT : binary wheels of LOCAL's dependencies for CPython PY on
# glibc GLIBC (the build stage has no compiler for them), through this host's pip configuration.
dependency_wheels() {
    local py="$1" glibc="$2" local_dir="$3" out="$4" minor whl
    local platforms=(--platform manylinux2014_x86_64)
    for (( minor = ${glibc#*.}; minor >= 17; minor-- )); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    "${PIP[@]}" download -q --only-binary=:all: --python-version "$py" --implementation cp \
        --abi "cp${py/./}" --abi abi3 --abi none "${platforms[@]}" --platform any \
        --find-links "$local_dir" --dest "$out" "$local_dir"/*.whl >&2 || return 1
    for whl in "$local_dir"/*.whl; do rm -f "$out/$(basename "$whl")"; done
}

# requirements WHEEL... : the Requires-Dist lines of the wheels' metadata.
requirements() {
    "${PIP[0]}" -c 'import sys, zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        print(*sorted(l for l in whl.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")), sep="\n")' "$@"
}

# make_wheels DIR : DIR/snapd the checkout's wheels, DIR/deps its dependencies' wheels. Both are
# cached: the first by the checkout's files (as git sees them: tracked and untracked, not
# ignored, so no stale build/ leaks in), the second by the requirements, Python and glibc.
make_wheels() {
    local dir="$1" versions py glibc src key
    PIP=("${PYTHON:-$([[ -x $root/.venv/bin/python ]] && echo "$root/.venv/bin/python" || echo python3)}" -m pip)
    versions="$(base_versions)"; py="${versions% *}"; glibc="${versions#* }"
    src="$(mktemp -d)"
    (cd "$root" && git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -c) >"$src.tar"
    tar -C "$src" -xf "$src.tar"
    key="$(sha256sum <"$src.tar" | cut -c1-16)"
    cached "$dir/snapd" snapd "$key" local_wheels "$src"
    rm -rf "$src" "$src.tar"
    key="$({ requirements "$dir"/snapd/*.whl; echo "$py $glibc"; } | sha256sum | cut -c1-16)"
    (( ! refresh )) || rm -rf "$CACHE/wheels/deps-$key"
    log "wheels of snapd's dependencies for CPython $py, glibc $glibc"
    cached "$dir/deps" deps "$key" dependency_wheels "$py" "$glibc" "$dir/snapd"
}

# make_context DIR
make_context() {
    local dir="$1"
    install -m 0755 "$root/scripts/install-criu.sh" "$dir/install-criu.sh"
    install -m 0644 "$root/deploy/image/config.toml" "$dir/config.toml"
    mkdir -p "$dir/criu-src"
    fetch_tarball    # install-criu.sh: cached in $PREFIX/src, sha256 checked
    cp "$PREFIX/src/$CRIU_TARBALL" "$dir/criu-src/"
    make_wheels "$dir/wheels"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
refresh=0
work=""    # where ensure_bases makes root file systems (removed on exit)
build_main() {
    local only_flags=0
    while (( $# )); do
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --release) [[ $# -ge 2 && -n "$2" ]] || { usage >&2; die "--release needs a name"; }; RELEASE="$2"; shift 2 ;;
            --release=*) RELEASE="${1#--release=}"; shift ;;
            --refresh) refresh=1; shift ;;
            --run-flags) only_flags=1; shift ;;
            *) usage >&2; printf '%s: unknown argument: %s\n' "$prog" "$1" >&2; exit 2 ;;
        esac
    done
    (( EUID == 0 )) || die "run as root (podman builds and runs the privileged containers as root)"
    command -v podman >/dev/null || die "podman is not installed (apt-get install podman)"

    if (( only_flags )); then
        ensure_bases runtime
        run_flags
        return 0
    fi

    local t0=$SECONDS
    ensure_bases
    local flags
    flags="$(run_flags)" || exit $?
    mapfile -t RUN_FLAGS <<<"$flags"
    [[ -n "$flags" ]] || RUN_FLAGS=()
    local version sha tag ctx
    version="$(sed -nE 's/^version = "([^"]+)"/\1/p' "$root/pyproject.toml" | head -n1)"
    sha="$(git -C "$root" rev-parse --short HEAD)"
    [[ -z "$(git -C "$root" status --porcelain)" ]] || sha+=-dirty
    tag="$IMAGE:$version-$sha"

    mkdir -p "$CACHE"
    ctx="$(mktemp -d "$CACHE/context.XXXXXX")"
    trap "rm -rf -- $(printf %q "$ctx")" EXIT  # expanded now: ctx is local, gone when a die runs the trap
    make_context "$ctx"
    log "building $tag (bases $BASE, $BUILD_BASE; podman ${RUN_FLAGS[*]:-defaults})"
    podman build --pull=never --network none --layers "${RUN_FLAGS[@]}" \
        --build-arg "RUNTIME_BASE=$BASE" --build-arg "BUILD_BASE=$BUILD_BASE" \
        --build-arg "VERSION=$version" --build-arg "REVISION=$(git -C "$root" rev-parse HEAD)" \
        -f "$root/deploy/image/Containerfile" -t "$tag" -t "$IMAGE:$version" "$ctx" >&2 ||
        die "podman build failed"
    rm -rf "$ctx"; trap - EXIT
    log "built $tag ($(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)) in $((SECONDS - t0)) s"
    echo "$tag"
}

build_main "$@"
