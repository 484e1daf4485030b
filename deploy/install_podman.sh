#!/usr/bin/env bash
# Install what deploy/smoke.sh needs on a Debian/Ubuntu host without a Docker engine: Podman
# with the runc runtime (crun fails on these sandboxed machines: setrlimit is not permitted),
# CNI networking with DNS names (compose services find each other by name) and debootstrap
# (a local Debian base image when none can be pulled). podman-compose comes from PyPI, in
# smoke.sh. Idempotent: does nothing when everything is there or a Docker engine answers.
#
#   sudo bash deploy/install_podman.sh
set -euo pipefail

if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
  echo "[install_podman] a Docker engine answers: nothing to install"
  exit 0
fi
PACKAGES=(podman runc containernetworking-plugins golang-github-containernetworking-plugin-dnsname
  debootstrap)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install_podman] installed already: ${PACKAGES[*]}"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[install_podman] missing ${missing[*]}: run as root" >&2
  exit 1
fi
echo "[install_podman] apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends: no crun (podman would prefer it) and no rootless extras.
apt-get install -y --no-install-recommends "${missing[@]}" \
  || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
