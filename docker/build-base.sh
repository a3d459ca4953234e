#!/usr/bin/env bash
# Make the Dockerfile's default base image locally from Debian packages, for hosts that cannot
# pull from an image registry (air-gapped builds, CI without registry access).
#
#   docker/build-base.sh [IMAGE_NAME]
#
# IMAGE_NAME defaults to the name the Dockerfile's BASE_IMAGE expects
# (docker.io/library/debian:bookworm-slim). Nothing is rebuilt when that image already exists.
# Needs root and debootstrap. Environment: DOCKER (container CLI, default podman; may carry
# global flags, e.g. "podman --storage-driver=vfs"), SUITE (default bookworm),
# DEBIAN_MIRROR (default: the first Debian archive this machine's apt sources name, else
# debootstrap's own default).
set -euo pipefail

name="${1:-docker.io/library/debian:bookworm-slim}"
read -r -a docker <<<"${DOCKER:-podman}"
suite="${SUITE:-bookworm}"

# The first Debian archive URI of this machine's apt sources (one-line and deb822 formats).
apt_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  cat "${files[@]}" 2>/dev/null | awk '
    /^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }
    /^[[:space:]]*URIs:/ { print $2 }' | grep -v -i security | head -n 1 || true
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror)}"

if "${docker[@]}" image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name exists; not rebuilding"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/ssr-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite from ${mirror:-the default archive of debootstrap} into $rootfs"
debootstrap --variant=minbase "$suite" "$rootfs" ${mirror:+"$mirror"}
# Keep the image small: no package caches or lists (the Dockerfile runs apt-get update itself).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
chmod 755 "$rootfs"  # mktemp made it 0700: that would become the image's / and lock out non-root users
tar -C "$rootfs" --numeric-owner -c . | "${docker[@]}" import - "$name"
echo "imported base image $name"
