#!/usr/bin/env bash
# Set-up step (never run by the workflow): put Fashion-MNIST's idx files into DEST, from Debian's
# package dataset-fashion-mnist (MIT licence). Needs no root once apt's package lists exist.
set -euo pipefail
dest=${1:-resources/datasets/fashion-mnist}
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
installed=/usr/share/datasets/fashion-mnist

have_all() { for f in "${files[@]}"; do [ -s "$1/$f" ] || return 1; done; }

if have_all "$dest"; then
  echo "fetch-demo-data: $dest is complete"
  exit 0
fi
mkdir -p "$dest"
if have_all "$installed"; then
  cp "${files[@]/#/$installed/}" "$dest/"
  echo "fetch-demo-data: copied from $installed"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
apt_opts=()
[ "$(id -u)" = 0 ] && apt_opts=(-o APT::Sandbox::User=root)
download() { (cd "$tmp" && apt-get "${apt_opts[@]}" download -q dataset-fashion-mnist); }
if ! download; then
  if [ "$(id -u)" = 0 ]; then
    echo "fetch-demo-data: apt's package lists look missing or stale; running apt-get update"
    apt-get update -q && download
  else
    echo "fetch-demo-data: 'apt-get download dataset-fashion-mnist' failed. Ask an admin to run" >&2
    echo "  'apt-get update', or copy the four idx .gz files of Fashion-MNIST into $dest/" >&2
    exit 1
  fi
fi
dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/unpacked"
cp "${files[@]/#/$tmp/unpacked$installed/}" "$dest/"
cp "$tmp/unpacked/usr/share/doc/dataset-fashion-mnist/copyright" "$dest/COPYRIGHT"
have_all "$dest"
echo "fetch-demo-data: unpacked dataset-fashion-mnist into $dest"
