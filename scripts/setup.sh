#!/usr/bin/env bash
# Set up clusterfw on a fresh Debian/Ubuntu host (run as root):
# the apt packages it needs, then the Python package itself (editable, from
# this checkout) with the test, systemd and lab extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # building systemd-python (sd_notify, journal)
  libsystemd-dev pkg-config gcc python3-dev
  # real block devices and filesystems for the daemon and the tests
  util-linux e2fsprogs xfsprogs
  # the lab: nodes with their own systemd, network namespaces, FUSE-backed disks
  systemd-container debootstrap zstd iproute2 fuse3 libfuse3-dev
  # the language-neutral external subsystem example
  socat
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs apt packages): sudo $0" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: installing apt packages: ${APT_PACKAGES[*]}" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
echo "setup: installing clusterfw (pip, editable) with test, systemd and lab extras" >&2
python3 -m pip install -q --disable-pip-version-check -e ".[test,systemd,lab]"
echo "setup: done. Try: clusterfw --help" >&2
