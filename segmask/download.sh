#!/usr/bin/env bash
# Download the official Segment Anything checkpoints used by segmask/segment.py.
#
#   bash segmask/download.sh [MODEL_TYPE ...] [--dir DIR]
#
# MODEL_TYPE is vit_h (default, the released masks), vit_l or vit_b; files go to the repository's
# pretrain_model/ folder (where segment.py looks by default) unless --dir says otherwise.
# Existing files are kept.
set -euo pipefail

BASE_URL="https://dl.fbaipublicfiles.com/segment_anything"
DEST="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/pretrain_model"
MODELS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DEST="$2"; shift 2 ;;
    vit_h|vit_l|vit_b) MODELS+=("$1"); shift ;;
    *) echo "unknown argument: $1 (expected vit_h, vit_l, vit_b or --dir DIR)" >&2; exit 2 ;;
  esac
done
[[ ${#MODELS[@]} -eq 0 ]] && MODELS=(vit_h)

declare -A FILES=(
  [vit_h]="sam_vit_h_4b8939.pth"
  [vit_l]="sam_vit_l_0b3195.pth"
  [vit_b]="sam_vit_b_01ec64.pth"
)

mkdir -p "$DEST"
for model in "${MODELS[@]}"; do
  file="${FILES[$model]}"
  if [[ -f "$DEST/$file" ]]; then
    echo "$DEST/$file exists, skipping"
    continue
  fi
  echo "downloading $file to $DEST/"
  if command -v wget >/dev/null; then
    wget -O "$DEST/$file.part" "$BASE_URL/$file"
  else
    curl -fL -o "$DEST/$file.part" "$BASE_URL/$file"
  fi
  mv "$DEST/$file.part" "$DEST/$file"
done
