#!/usr/bin/env bash
# Builds herd-test-busybox:latest, the image the Docker integration tests run
# (tests/tests/docker.rs): FROM scratch, a static busybox, one symlink per applet under /bin,
# PATH=/bin. No registry is needed: nothing is pulled.
#
# Usage: scripts/build-test-image.sh [--force]
#   --force   rebuild even if the image already exists
#
# Runs as root on Debian 12 (it may `apt-get install busybox-static`). Idempotent: an existing
# image is kept unless --force is given. Progress goes to stderr; nothing is printed on stdout.
set -euo pipefail

IMAGE="herd-test-busybox:latest"
BUSYBOX="/bin/busybox"

log() { printf 'build-test-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

force=false
for argument in "$@"; do
    case "$argument" in
        --force) force=true ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument \`$argument\`; usage: $0 [--force]" ;;
    esac
done

command -v docker >/dev/null || die "the docker CLI is not installed: install docker.io (Debian) or Docker Engine"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}): start Docker"

if ! $force && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists; nothing to do (use --force to rebuild)"
    exit 0
fi

# A static binary: `ldd` says "not a dynamic executable" (exit 1) or "statically linked".
is_static() {
    [ -x "$1" ] || return 1
    local report
    report="$(LC_ALL=C ldd "$1" 2>&1 || true)"
    case "$report" in
        *"not a dynamic executable"*|*"statically linked"*) return 0 ;;
        *) return 1 ;;
    esac
}

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

busybox_binary="$BUSYBOX"
if ! is_static "$BUSYBOX"; then
    [ "$(id -u)" = 0 ] || die "$BUSYBOX is missing or not static and installing busybox-static needs root: run as root"
    export DEBIAN_FRONTEND=noninteractive
    log "updating the package lists"
    apt-get update -qq >&2
    if dpkg-query -W -f='${Status}' busybox 2>/dev/null | grep -q 'install ok installed'; then
        # The dynamic `busybox` package conflicts with busybox-static: take the static binary
        # out of the package without installing it rather than replacing what the host uses.
        log "the dynamic busybox package is installed; extracting busybox-static without installing it"
        (cd "$workdir" && apt-get download busybox-static >&2)
        dpkg-deb -x "$workdir"/busybox-static_*.deb "$workdir/package"
        busybox_binary="$workdir/package/bin/busybox"
    else
        log "installing busybox-static"
        apt-get install -y -qq --no-install-recommends busybox-static >&2
    fi
    is_static "$busybox_binary" || die "$busybox_binary is not a static binary; check the busybox-static package"
fi
log "using $busybox_binary ($("$busybox_binary" 2>&1 | head -n 1))"

context="$workdir/context"
mkdir -p "$context/rootfs/bin" "$context/rootfs/usr/bin" "$context/rootfs/etc" "$context/rootfs/tmp"
cp "$busybox_binary" "$context/rootfs/bin/busybox"
chmod 0755 "$context/rootfs/bin/busybox"
chmod 1777 "$context/rootfs/tmp"
applets=0
for applet in $("$busybox_binary" --list); do
    [ "$applet" = busybox ] && continue
    ln -s busybox "$context/rootfs/bin/$applet"
    applets=$((applets + 1))
done
for required in sh echo cat wc tar gzip sleep id ls; do
    [ -L "$context/rootfs/bin/$required" ] || die "this busybox has no \`$required\` applet"
done
ln -s ../../bin/busybox "$context/rootfs/usr/bin/env"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$context/rootfs/etc/group"
log "root filesystem ready: busybox and $applets applet links"

cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/bin
LABEL org.opencontainers.image.description="herd integration tests: a static busybox, nothing else"
CMD ["/bin/sh"]
EOF

# The client may be newer than the engine (here: client 28, engine 20.10). Without buildx a
# recent client refuses to build with BuildKit, so fall back to the classic builder.
if docker buildx version >/dev/null 2>&1; then
    log "building $IMAGE with BuildKit"
    docker build --quiet --tag "$IMAGE" "$context" >/dev/null
else
    log "building $IMAGE with the classic builder (buildx is not installed)"
    DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" >/dev/null
fi

output="$(docker run --rm --network none "$IMAGE" sh -c 'echo "$PATH" $(id -u)')"
[ "$output" = "/bin 0" ] || die "the new image does not run as expected (got \`$output\`)"
log "built $IMAGE"
