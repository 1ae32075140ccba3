#!/bin/sh
# Install what `clusterfw lab` needs on a Debian 12 host (run as root).
# See docs/lab.md "Host setup". Idempotent.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y systemd-container debootstrap zstd fuse3 iproute2 util-linux tar
python3 -m pip install 'mfusepy>=3.1'
