#!/usr/bin/env bash
# Downloads for users with internet. Nothing in the tests or the demo needs this script.
#
# Every file is fetched to a temporary .part file, verified by sha256, and only then moved into place.
# Checksums live in checksums.sha256 (full sums). Where no full sum is published by the file's author, the
# script verifies what is known (the hash prefix in pytorch-fid's file name, as torch.hub does) and otherwise
# refuses unless you pass the expected sum yourself: EXPECTED_SHA256=<64 hex> bash download.sh TARGET.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUMS="$ROOT/checksums.sha256"

usage() {
    cat <<USAGE
usage: bash download.sh TARGET

targets:
  celeba-hq-dataset   CelebA-HQ 256x256 in the StarGAN-v2 layout -> data/celeba_hq/{train,val}/{female,male}
  fid-weights         pytorch-fid's Inception weights -> data/fid/pt_inception-2015-12-05-6726825d.pth
  pretrained-models   verify the shipped checkpoints in checkpoints/ (larger versions: none published yet)

environment:
  EXPECTED_SHA256     full sha256 to require for the downloaded file (overrides checksums.sha256)
USAGE
}

die() { echo "download.sh: $*" >&2; exit 1; }

fetch() {  # fetch URL DEST : download to DEST.part, then print its sha256
    local url="$1" dest="$2"
    mkdir -p "$(dirname "$dest")"
    if command -v curl >/dev/null; then
        curl -fL --retry 3 -o "$dest.part" "$url"
    elif command -v wget >/dev/null; then
        wget -O "$dest.part" "$url"
    else
        die "neither curl nor wget is installed"
    fi
}

pinned_sum() {  # pinned_sum NAME : the full sum from checksums.sha256, or nothing
    [ -f "$SUMS" ] || return 0
    awk -v n="$1" '$2 == n || $2 == "*"n {print $1}' "$SUMS" | head -n 1
}

verify_and_place() {  # verify_and_place PART DEST NAME [PREFIX]
    local part="$1" dest="$2" name="$3" prefix="${4:-}"
    local got want
    got="$(sha256sum "$part" | awk '{print $1}')"
    want="${EXPECTED_SHA256:-$(pinned_sum "$name")}"
    if [ -n "$want" ]; then
        [ "$got" = "$want" ] || { rm -f "$part"; die "$name: sha256 mismatch (got $got, expected $want)"; }
    elif [ -n "$prefix" ]; then
        case "$got" in "$prefix"*) ;; *) rm -f "$part"; die "$name: sha256 $got does not start with $prefix";; esac
    else
        rm -f "$part"
        die "$name: no published sha256 to verify against; rerun with EXPECTED_SHA256=<sum you trust>"
    fi
    mv -f "$part" "$dest"
    echo "$name: sha256 $got verified -> $dest"
}

[ $# -eq 1 ] || { usage; exit 2; }

case "$1" in
    celeba-hq-dataset)
        zip="$ROOT/data/celeba_hq.zip"
        fetch "https://www.dropbox.com/s/f7pvjij2xlpff59/celeba_hq.zip?dl=1" "$zip"
        verify_and_place "$zip.part" "$zip" "celeba_hq.zip"
        tmp="$(mktemp -d "$ROOT/data/.celeba_hq.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        unzip -q "$zip" -d "$tmp"
        [ -d "$tmp/celeba_hq/train" ] || die "celeba_hq.zip: no celeba_hq/train folder inside"
        rm -rf "$ROOT/data/celeba_hq"
        mv "$tmp/celeba_hq" "$ROOT/data/celeba_hq"
        rm -f "$zip"
        echo "CelebA-HQ ready in data/celeba_hq"
        ;;
    fid-weights)
        name="pt_inception-2015-12-05-6726825d.pth"
        dest="$ROOT/data/fid/$name"
        fetch "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/$name" "$dest"
        verify_and_place "$dest.part" "$dest" "$name" "6726825d"
        ;;
    pretrained-models)
        [ -f "$SUMS" ] || die "checksums.sha256 missing"
        (cd "$ROOT" && grep ' checkpoints/' "$SUMS" | sha256sum -c -) || die "shipped checkpoints do not match"
        echo "shipped checkpoints verified; no larger pretrained models are published yet"
        ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac
