#!/bin/sh
# Builds a minimal Debian base image offline from any container registry: debootstrap from
# the Debian mirror this machine's apt already uses, then `podman import`.
# Elsewhere the Containerfile builds FROM a pinned official image digest instead
# (its BASE build argument; docs/container.md).
#
# Usage: scripts/make_base_image.sh [IMAGE] [SUITE]
#   IMAGE  default localhost/debian:bookworm-min;  SUITE  default bookworm.
# Does nothing when IMAGE exists already (FORCE=1 rebuilds it). Needs root, debootstrap, podman.
set -eu

IMAGE=${1:-localhost/debian:bookworm-min}
SUITE=${2:-bookworm}

if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi

# The first Debian archive URI of the host's apt sources (deb822 .sources or one-line .list).
mirror=$(
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && sed -n 's/^URIs:[[:space:]]*//p' "$f"
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] && sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f"
        done
    } | tr ' ' '\n' | grep -v -e '-security' -e '^$' | head -n 1
)
if [ -z "$mirror" ]; then
    echo "no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
    exit 1
fi

rootfs=$(mktemp -d /var/tmp/sluice-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >/dev/null

# The host's apt sources (same mirror, security and updates) so apt-get works in builds.
# Only the enabled Debian ones: a disabled or third-party list is left out.
rm -f "$rootfs/etc/apt/sources.list"
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    grep -q 'debian' "$f" && cp "$f" "$rootfs${f}"
done
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | podman import --message "debootstrap $SUITE minbase from $mirror" - "$IMAGE"
echo "base image: $IMAGE"
