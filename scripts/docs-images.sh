#!/usr/bin/env bash
# Redraws the pictures the README shows from the demo's newest outputs (run `make demo` first):
# a screenshot of the top of the report and the two t-SNE maps, scaled down, all by headless
# Chromium (the same browser the report test uses).
set -euo pipefail
cd "$(dirname "$0")/.."
browser=${ONENET_CHROMIUM:-chromium}
report=$(realpath artifacts/latest/report/report.html)
tsne=$(realpath artifacts/latest/tsne)
mkdir -p docs
profile=$(mktemp -d)
scratch=$(mktemp -d)
trap 'rm -rf "$profile" "$scratch"' EXIT

shoot() { # URL WIDTH HEIGHT SCALE OUT
  "$browser" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$2,$3" --force-device-scale-factor="$4" --screenshot="$5" "$1" 2>/dev/null
}

shoot "file://$report" 1280 2100 0.625 docs/report.png
for map in image_tsne word_tsne; do
  printf '<body style="margin:0"><img src="file://%s/%s.png" style="width:600px;display:block">' \
    "$tsne" "$map" > "$scratch/$map.html"
  shoot "file://$scratch/$map.html" 600 600 1 "docs/$map.png"
done
ls -l docs
