#!/usr/bin/env bash
# Installs the CPU part of libtorch 2.13.0 from Python wheels into a cache folder outside the clone
# (so every clone on this machine reuses it) and links it as ./libtorch, where .cargo/config.toml
# points. Idempotent: a second run only re-creates the link.
#
# With a GPU: set ONENET_LIBTORCH to a full CUDA libtorch 2.13.0 folder (include/ and lib/) before
# running this; it is then linked instead and `tch` picks CUDA up at run time.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=2.13.0
cache=${ONENET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/onenet}
python=${PYTHON:-python3}

link_to() {
  ln -sfn "$1" "$repo/libtorch"
  echo "libtorch: $repo/libtorch -> $1"
}

if [ -n "${ONENET_LIBTORCH:-}" ]; then
  [ -f "$ONENET_LIBTORCH/lib/libtorch_cpu.so" ] || { echo "ONENET_LIBTORCH=$ONENET_LIBTORCH has no lib/libtorch_cpu.so" >&2; exit 1; }
  link_to "$ONENET_LIBTORCH"
  exit 0
fi

dest=$cache/libtorch-$version-cpu
if [ -f "$dest/.complete" ]; then
  link_to "$dest"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.setup.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetching torch==$version and the two CUDA runtime stubs it links against (wheels)..."
"$python" -m pip download --quiet --no-deps --dest "$work/wheels" \
  "torch==$version" "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*"

stage=$work/libtorch
mkdir -p "$stage/lib"
"$python" - "$work/wheels" "$stage" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, stage = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# CPU libraries only: leaving libtorch_cuda.so out keeps anything from linking CUDA.
wanted_libs = {"libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1",
               "libcudart.so.13", "libcupti.so.13"}
found = set()
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            if name.startswith("torch/include/"):
                target = stage / "include" / name[len("torch/include/"):]
            elif name.rsplit("/", 1)[-1] in wanted_libs and "/lib/" in name:
                base = name.rsplit("/", 1)[-1]
                found.add(base)
                target = stage / "lib" / base
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
missing = wanted_libs - found
if missing:
    sys.exit(f"wheels lack {sorted(missing)}")
PY
echo "$version" > "$stage/build-version"
touch "$stage/.complete"
rm -rf "$dest"
mv "$stage" "$dest"
link_to "$dest"
