#!/usr/bin/env bash
# Copy the small labelled device pack (and, optionally, some unlabeled pneumonia images) into an
# ignored folder of the checkout, so a run on a lent GPU machine can carry it (64 MiB limit).
#   scripts/prepare_device_pack.sh [DEST=devpack] [--with-pneumonia]
set -euo pipefail
dest=${1:-devpack}
shared="$(cd "$(dirname "$0")/.." && pwd)/../shared/data"
[ -d "$shared/device-pack" ] || { echo "error: $shared/device-pack not found" >&2; exit 2; }
mkdir -p "$dest"
cp -r "$shared/device-pack/montgomery-shenzhen-256" "$dest/"
if [ "${2:-}" = "--with-pneumonia" ]; then
  mkdir -p "$dest/pneumonia"
  cp -r "$shared/chest-xray-pneumonia-224/test" "$dest/pneumonia/"
  mkdir -p "$dest/pneumonia/train" && cp -r "$shared/chest-xray-pneumonia-224/train/NORMAL" "$dest/pneumonia/train/"
fi
du -sh "$dest"
