#!/usr/bin/env bash
# Write an earlier model file, from the git tag that keeps the lineage, to a recipe's parent.pt:
#     bash training_recipes/common/fetch_parent.sh VERSION DEST
# VERSION is v1 .. v5; its sha256 is checked against common/lineage.sha256 before DEST is written
# (written to a temporary file first, so a failed check leaves no DEST behind). LINEAGE_SHA256 may
# name another list of sums (tests).
set -euo pipefail
TAG=models-lineage-v1-v5
version=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
sums=${LINEAGE_SHA256:-$here/lineage.sha256}
want=$(awk -v v="$version" '$2 == v {print $1}' "$sums")
[ -n "$want" ] || { echo "unknown model version $version (see $sums)" >&2; exit 1; }
git -C "$here" rev-parse -q --verify "refs/tags/$TAG" > /dev/null \
    || { echo "git tag $TAG not found: git fetch origin tag $TAG" >&2; exit 1; }
tmp="$dest.part"
git -C "$here" show "$TAG:Resources/Models/$version/mlvirnet_default.pt" > "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    echo "model $version from $TAG has sha256 $got, expected $want" >&2
    exit 1
fi
mv "$tmp" "$dest"
echo "parent model $version -> $dest (sha256 $got)"
