#!/usr/bin/env bash
# install-criu.sh -- find, or build, a CRIU that works on this host, for snapd.
#
# Why this exists: Debian bookworm ships criu 3.17, which fails at start-up on
# the 6.18 kernels we run ("vdso: Unexpected rt vDSO area bounds").  CRIU 4.2.1
# works.  This script finds a usable CRIU (>= 4.0 and `criu check` passing) or
# builds 4.2.1 from Debian's upstream tarball into a private prefix, without
# touching the host's apt configuration and without installing bookworm's criu.
#
# Usage: see usage() below or run with --help.
#
# Output contract: every message goes to stderr; the LAST line of stdout is the
# absolute path of the CRIU to use (or of the bundle wrapper with --bundle).

set -euo pipefail

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
CRIU_VERSION="4.2.1"
CRIU_DEB_VERSION="4.2.1-1"            # Debian source package version (sid)
CRIU_TARBALL="criu_${CRIU_VERSION}.orig.tar.xz"
# sha256 of criu_4.2.1.orig.tar.xz as fetched through apt (whose signature
# chain InRelease -> Sources -> .dsc vouches for it); also guards the cache
# against truncation/corruption.  SNAPD_CRIU_TARBALL_SHA256= (empty) disables.
CRIU_TARBALL_SHA256="${SNAPD_CRIU_TARBALL_SHA256-29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9}"
MIN_MAJOR=4                           # accept any CRIU >= 4.0

PREFIX="${SNAPD_CRIU_PREFIX:-/opt/gpu-snapd/criu}"
self_check=1                          # run `criu check` after a build (--no-check: 0)

# Build dependencies on Debian bookworm (checked one by one with dpkg-query;
# only the missing ones are installed).  Deliberately NOT "criu".
BUILD_DEPS=(
    build-essential pkgconf xz-utils ca-certificates
    libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnl-3-dev
    libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler
    uuid-dev python3-protobuf libnftables-dev
    iproute2
)
# (iproute2 is for run time: CRIU runs its `ip` to save and restore the addresses and
# routes of a network namespace it dumps, e.g. a server started with `snapd run --netns`.)

# glibc core libraries: never bundled, the target host's own glibc is used.
BUNDLE_SKIP_RE='^(linux-vdso|linux-gate|ld-linux[^/]*|libc|libm|libpthread|libdl|librt|libresolv)\.so'

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
prog="$(basename "$0")"
log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$prog" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $prog [--bundle DIR] [--force-build] [--no-check] [--help]

Find or build CRIU >= ${MIN_MAJOR}.0 for snapd and print its absolute path as
the last line of stdout (all other messages go to stderr).

Resolution order (first one that exists, is >= ${MIN_MAJOR}.0 and passes
\`criu check\` wins):
  1. \$SNAPD_CRIU                 (explicit path)
  2. \$SNAPD_CRIU_PREFIX/bin/criu (private install; default prefix
                                  /opt/gpu-snapd/criu)
  3. criu on \$PATH
Otherwise CRIU ${CRIU_VERSION} is built from Debian's ${CRIU_TARBALL}
(fetched with a private apt configuration; /etc/apt is never modified) and
installed as \$SNAPD_CRIU_PREFIX/bin/criu.  The tarball is cached in
\$SNAPD_CRIU_PREFIX/src.  Missing build dependencies are installed with apt.

Options:
  --bundle DIR    also copy the CRIU binary and the shared libraries it needs
                  (except glibc core libs) into DIR/bin and DIR/lib, write a
                  wrapper DIR/criu that sets LD_LIBRARY_PATH, and print
                  DIR/criu.  For hosts without network (e.g. Ubuntu 24.04).
  --force-build   skip the search and rebuild into the private prefix.
  --no-check      skip \`criu check\` after a build: it tests this machine's
                  kernel, so it says nothing when building for another one
                  (scripts/build-image.sh builds the OCI image's CRIU so).
  -h, --help      show this help.

Environment:
  SNAPD_CRIU            explicit CRIU binary to try first
  SNAPD_CRIU_PREFIX     private install prefix (default /opt/gpu-snapd/criu)
  SNAPD_CRIU_MIRROR     Debian mirror URL to fetch source from (default: the
                        first .../debian mirror in this host's apt sources)
EOF
}

# criu_version BIN -> prints "X.Y[.Z]" or nothing.
criu_version() {
    "$1" --version 2>/dev/null | sed -nE 's/^Version:[[:space:]]*([0-9]+(\.[0-9]+)*).*/\1/p' | head -n1 || true
}

# criu_usable BIN [quiet] -> 0 if BIN is executable, >= MIN_MAJOR and `criu check` passes.
# Reasons for rejection are logged (they matter when the user set SNAPD_CRIU).
criu_usable() {
    local bin="$1" ver out rc
    [[ -x "$bin" && -f "$bin" ]] || return 1
    ver="$(criu_version "$bin")"
    if [[ -z "$ver" ]]; then
        log "ignoring $bin: cannot read its version"
        return 1
    fi
    if (( ${ver%%.*} < MIN_MAJOR )); then
        log "ignoring $bin: version $ver < ${MIN_MAJOR}.0"
        return 1
    fi
    # `criu check` may print harmless "rlimit: Can't setup RLIMIT_NOFILE"
    # errors; judge by the exit status plus the "Looks good" verdict.
    rc=0
    out="$("$bin" check 2>&1)" || rc=$?
    if (( rc != 0 )) || ! grep -q 'Looks good' <<<"$out"; then
        log "ignoring $bin (version $ver): 'criu check' failed (exit $rc):"
        sed 's/^/    /' <<<"$out" | tail -n 20 >&2
        return 1
    fi
    return 0
}

# abspath PATH -> absolute, symlink-free path.
abspath() { readlink -f -- "$1"; }

# find_criu -> prints the first usable CRIU (absolute path), or returns 1.
find_criu() {
    local c
    if [[ -n "${SNAPD_CRIU:-}" ]]; then
        if criu_usable "$SNAPD_CRIU"; then abspath "$SNAPD_CRIU"; return 0; fi
        log "SNAPD_CRIU=$SNAPD_CRIU is not usable, looking further"
    fi
    if criu_usable "$PREFIX/bin/criu"; then abspath "$PREFIX/bin/criu"; return 0; fi
    if c="$(command -v criu 2>/dev/null)" && criu_usable "$c"; then
        abspath "$c"; return 0
    fi
    return 1
}

# ---------------------------------------------------------------------------
# Build dependencies
# ---------------------------------------------------------------------------
pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

install_build_deps() {
    local missing=() p need_update=0
    for p in "${BUILD_DEPS[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    (( ${#missing[@]} == 0 )) && { log "build dependencies already installed"; return 0; }

    (( EUID == 0 )) || die "missing build dependencies (need root to install): ${missing[*]}"
    log "installing missing build dependencies: ${missing[*]}"

    # Only refresh the host's package lists if apt does not know a candidate
    # for some missing package (e.g. fresh container with empty lists).
    # (Output captured first: `apt-cache ... | grep -q` under pipefail would
    # report SIGPIPE as failure.)
    local policy
    for p in "${missing[@]}"; do
        policy="$(apt-cache policy "$p" 2>/dev/null || true)"
        if ! grep -qE 'Candidate: [^(]' <<<"$policy"; then
            need_update=1; break
        fi
    done
    if (( need_update )); then
        log "apt lists lack some packages; running apt-get update"
        apt-get update >&2 || die "apt-get update failed"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install failed for: ${missing[*]}"
}

# ---------------------------------------------------------------------------
# Source download through a private apt configuration
# ---------------------------------------------------------------------------

# detect_mirror -> prints the first Debian archive URL (path ending in
# /debian) found in this host's apt sources, in apt's reading order.
detect_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [[ -f "$f" ]] || continue
        case "$f" in
            *.list|*/sources.list)
                # one-line style: deb [options] URI suite components...
                sed -nE 's/^[[:space:]]*deb(-src)?[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\3/p' "$f" ;;
            *.sources)
                # deb822 style: "URIs:" field of stanzas not marked Enabled: no
                awk 'BEGIN { RS=""; FS="\n" }
                     { en=1; u="";
                       for (i = 1; i <= NF; i++) {
                         l = tolower($i);
                         if (l ~ /^enabled:[ \t]*no/) en=0;
                         if (l ~ /^uris:/) { u=$i; sub(/^[^:]*:[ \t]*/, "", u) }
                       }
                       if (en && u != "") { n=split(u, a, /[ \t]+/); for (j=1;j<=n;j++) print a[j] } }' "$f" ;;
        esac
    done | sed 's:/*$::' | grep -E '^https?://[^/]+(/.*)?/debian$' | head -n1
}

# fetch_tarball -> makes sure $PREFIX/src/$CRIU_TARBALL exists (cached).
fetch_tarball() {
    local src="$PREFIX/src" tarball="$PREFIX/src/$CRIU_TARBALL"
    mkdir -p "$src"
    if [[ -s "$tarball" ]] && tarball_ok "$tarball"; then
        log "using cached $tarball"; return 0
    fi
    rm -f "$tarball"

    local mirror="${SNAPD_CRIU_MIRROR:-}"
    [[ -n "$mirror" ]] || mirror="$(detect_mirror || true)"
    [[ -n "$mirror" ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d}; set SNAPD_CRIU_MIRROR"
    log "fetching criu ${CRIU_DEB_VERSION} source from $mirror (sid, private apt config)"

    # Private apt state: own sources file, own lists and caches.  Nothing under
    # /etc/apt or /var/lib/apt is written.
    local apt="$src/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl"
    local signed=""
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
        signed="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    printf 'deb-src %s%s sid main\n' "$signed" "$mirror" >"$apt/sources.list"
    # Let apt's unprivileged download user write where it downloads to.
    if id _apt >/dev/null 2>&1; then
        chown -R _apt "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl" || true
    fi
    local aptopts=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=false"
    )
    apt-get "${aptopts[@]}" update >&2 || die "apt-get update (private sid deb-src list) failed"

    # Prefer the exact Debian revision; if sid has moved on, any 4.2.1-N
    # carries the same upstream .orig.tar.xz.
    local want="$CRIU_DEB_VERSION" avail
    avail="$(apt-cache "${aptopts[@]}" showsrc criu 2>/dev/null | sed -nE 's/^Version:[[:space:]]*//p')"
    if ! grep -qxF "$want" <<<"$avail"; then
        want="$(grep -E "^([0-9]+:)?${CRIU_VERSION//./\\.}-" <<<"$avail" | head -n1 || true)"
        [[ -n "$want" ]] || die "criu ${CRIU_VERSION} not found in sid at $mirror (available: $(tr '\n' ' ' <<<"$avail"))"
        log "criu $CRIU_DEB_VERSION gone from sid; using $want (same upstream tarball)"
    fi

    # --download-only: no unpacking (no dpkg-source needed).  The
    # .debian.tar.xz may 404 on some mirrors; only the .orig.tar.xz matters, so
    # apt's exit status is not decisive -- the file's presence is.
    (cd "$apt/dl" && apt-get "${aptopts[@]}" source --download-only "criu=$want" >&2) ||
        log "apt-get source reported an error (checking whether the .orig.tar.xz arrived anyway)"
    [[ -s "$apt/dl/$CRIU_TARBALL" ]] || die "download of $CRIU_TARBALL from $mirror failed"
    tarball_ok "$apt/dl/$CRIU_TARBALL" || die "$CRIU_TARBALL has an unexpected sha256"
    mv -f "$apt/dl/$CRIU_TARBALL" "$tarball"
    rm -rf "$apt"     # the private sid index (~12 MB) is not needed any more
    log "cached $tarball"
}

tarball_ok() {
    local sum
    [[ -z "$CRIU_TARBALL_SHA256" ]] && return 0
    sum="$(sha256sum "$1" | cut -d' ' -f1)"
    [[ "$sum" == "$CRIU_TARBALL_SHA256" ]] && return 0
    log "$1: sha256 $sum, expected $CRIU_TARBALL_SHA256"
    return 1
}

# ---------------------------------------------------------------------------
# Build + install
# ---------------------------------------------------------------------------
build_criu() {
    local t0=$SECONDS
    install_build_deps
    fetch_tarball

    local bdir="$PREFIX/src/build"
    rm -rf "$bdir"; mkdir -p "$bdir"
    log "unpacking $CRIU_TARBALL"
    tar -C "$bdir" -xJf "$PREFIX/src/$CRIU_TARBALL"
    local top
    top="$(find "$bdir" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [[ -n "$top" && -f "$top/Makefile" ]] || die "unexpected tarball layout in $bdir"

    log "building criu ${CRIU_VERSION} in $top (make -j$(nproc) criu)"
    if ! make -C "$top" -j"$(nproc)" criu >"$bdir/build.log" 2>&1; then
        tail -n 40 "$bdir/build.log" >&2
        die "make criu failed; full log: $bdir/build.log"
    fi
    [[ -x "$top/criu/criu" ]] || die "build finished but $top/criu/criu is missing"

    # Atomic install: a concurrent reader never sees a half-written binary.
    mkdir -p "$PREFIX/bin"
    install -m 0755 "$top/criu/criu" "$PREFIX/bin/.criu.new"
    mv -f "$PREFIX/bin/.criu.new" "$PREFIX/bin/criu"
    log "installed $PREFIX/bin/criu ($(criu_version "$PREFIX/bin/criu")) in $((SECONDS - t0)) s"
    rm -rf "$bdir"

    # Post-install self test: must report "Looks good".
    if (( ! self_check )); then log "--no-check: 'criu check' not run"; return 0; fi
    local out rc=0
    out="$("$PREFIX/bin/criu" check 2>&1)" || rc=$?
    if (( rc != 0 )) || ! grep -q 'Looks good' <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "'$PREFIX/bin/criu check' failed (exit $rc) after building criu ${CRIU_VERSION}"
    fi
    log "'criu check': Looks good"
}

# ---------------------------------------------------------------------------
# Bundle: binary + non-glibc shared libraries + LD_LIBRARY_PATH wrapper
# ---------------------------------------------------------------------------
is_elf() { [[ "$(head -c4 -- "$1" 2>/dev/null | od -An -c | tr -d ' ')" == '177ELF' ]]; }

# Copy the non-glibc shared libraries BIN needs (transitively) into LIBDIR, each
# under its soname; LIBPATH: where to resolve them first (a bundle's lib/).
bundle_libs() {
    local bin="$1" libpath="$2" libdir="$3" line soname path lddout
    # ldd lists the whole transitive closure as "soname => /path (addr)".
    lddout="$(LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$bin")" ||
        die "ldd $bin failed"
    while read -r line; do
        [[ "$line" == *"=> not found"* ]] && die "ldd: $line (library missing for $bin)"
        [[ "$line" =~ ^([^[:space:]]+)[[:space:]]+=\>[[:space:]]+(/[^[:space:]]+) ]] || continue
        soname="${BASH_REMATCH[1]}"; path="${BASH_REMATCH[2]}"
        [[ "$soname" =~ $BUNDLE_SKIP_RE ]] && continue
        install -m 0644 "$(abspath "$path")" "$libdir/$soname"   # real file under its soname
    done <<<"$lddout"
}

make_bundle() {
    local criu="$1" dir="$2" libpath=""
    # If the CRIU we resolved is itself a bundle wrapper (a shell script), bundle
    # the real binary behind it, resolving libraries from that bundle.
    if ! is_elf "$criu"; then
        if is_elf "$(dirname "$criu")/bin/criu"; then
            libpath="$(dirname "$criu")/lib"
            criu="$(dirname "$criu")/bin/criu"
        else
            die "$criu is not an ELF binary; cannot bundle it"
        fi
    fi
    mkdir -p "$dir"
    dir="$(abspath "$dir")"
    # Refuse to wipe a directory that is not one of our bundles.
    if [[ -n "$(ls -A "$dir")" && ! -f "$dir/.criu-bundle" ]]; then
        die "$dir is not empty and not a CRIU bundle; refusing to overwrite it"
    fi

    # Assemble in a staging directory next to DIR, then swap it in, so a
    # failure (or re-bundling from DIR itself) never leaves DIR half-written.
    local stage
    stage="$(mktemp -d "$(dirname "$dir")/.criu-bundle.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/bin" "$stage/lib"
    : >"$stage/.criu-bundle"
    install -m 0755 "$criu" "$stage/bin/criu"
    bundle_libs "$criu" "$libpath" "$stage/lib"
    # iproute2's ip: CRIU runs it (CR_IP_TOOL) to dump and restore a network namespace
    local ip; ip="$(command -v ip || true)"
    [[ -z "$ip" && -x "$(dirname "$criu")/ip" ]] && ip="$(dirname "$criu")/ip"   # re-bundling a bundle
    if [[ -n "$ip" ]]; then
        install -m 0755 "$(abspath "$ip")" "$stage/bin/ip"
        bundle_libs "$stage/bin/ip" "$libpath" "$stage/lib"
    else
        log "warning: no iproute2 'ip' here: the bundle cannot dump or restore network namespaces"
    fi
    local n; n="$(ls "$stage/lib" | wc -l)"

    cat >"$stage/criu" <<'WRAP'
#!/bin/sh
# Wrapper generated by install-criu.sh: run the bundled CRIU with its bundled
# shared libraries (glibc comes from the host), and the bundled iproute2 ip
# for network namespaces unless CR_IP_TOOL names another.
here="$(dirname "$(readlink -f "$0")")"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
if [ -z "${CR_IP_TOOL:-}" ] && [ -x "$here/bin/ip" ]; then
    CR_IP_TOOL="$here/bin/ip"
    export CR_IP_TOOL
fi
exec "$here/bin/criu" "$@"
WRAP
    chmod 0755 "$stage/criu"

    # Record what is inside, for the person unpacking it on the target host.
    {
        echo "criu $(criu_version "$criu") from $criu, bundled on $(hostname) $(date -u +%FT%TZ)"
        echo "glibc needed: >= $(objdump -T "$stage"/bin/* "$stage"/lib/* 2>/dev/null |
            sed -nE 's/.*GLIBC_([0-9]+(\.[0-9]+)+).*/\1/p' | sort -uV | tail -n1)"
        (cd "$stage" && sha256sum bin/* lib/*)
    } >"$stage/MANIFEST"

    # Smoke test the wrapper before installing it.
    "$stage/criu" --version >/dev/null 2>&1 || die "bundle wrapper $stage/criu does not run"
    if [[ -x "$stage/bin/ip" ]]; then
        LD_LIBRARY_PATH="$stage/lib" "$stage/bin/ip" -V >/dev/null 2>&1 || die "bundled $stage/bin/ip does not run"
    fi

    # Swap in: replace only what we own inside DIR.
    rm -rf "$dir/bin" "$dir/lib" "$dir/criu" "$dir/MANIFEST"
    mv "$stage/bin" "$stage/lib" "$stage/criu" "$stage/MANIFEST" "$stage/.criu-bundle" "$dir/"
    rm -rf "$stage"; trap - EXIT

    log "bundle ready: $dir ($n libraries, $(du -sh "$dir" | cut -f1))"
    echo "$dir/criu"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
main() {
    local bundle="" force=0
    while (( $# )); do
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --bundle) [[ $# -ge 2 && -n "$2" ]] || die "--bundle needs a directory"; bundle="$2"; shift 2 ;;
            --bundle=*) bundle="${1#--bundle=}"; [[ -n "$bundle" ]] || die "--bundle needs a directory"; shift ;;
            --force-build) force=1; shift ;;
            --no-check) self_check=0; shift ;;
            *) usage >&2; log "ERROR: unknown argument: $1"; exit 2 ;;
        esac
    done

    local criu=""
    if (( ! force )); then
        criu="$(find_criu)" || criu=""
    fi

    if [[ -z "$criu" ]]; then
        # Serialise concurrent builds; re-check once the lock is held in case
        # another invocation just finished building.
        mkdir -p "$PREFIX" || die "cannot create $PREFIX"
        exec 9>"$PREFIX/.install.lock"
        flock 9
        if (( ! force )) && criu_usable "$PREFIX/bin/criu"; then
            criu="$(abspath "$PREFIX/bin/criu")"
        else
            log "no usable CRIU >= ${MIN_MAJOR}.0 found; building ${CRIU_VERSION} into $PREFIX"
            build_criu
            criu="$(abspath "$PREFIX/bin/criu")"
        fi
        exec 9>&-
    fi
    log "using $criu ($(criu_version "$criu"))"

    if [[ -n "$bundle" ]]; then
        make_bundle "$criu" "$bundle"
    else
        echo "$criu"
    fi
}

# Run unless sourced: scripts/build-image.sh sources this file for CRIU's version, tarball,
# checksum, build dependencies and mirror, so that the image's CRIU is this script's.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
