#!/usr/bin/env bash
# Run where PyPI is reachable, BEFORE the GPU check: downloads the wheels the GPU machine lacks
# (bench/gpu_env.py WHEELS, pinned to the versions of the Python that runs this script: use the
# project's venv) as cp312 manylinux x86_64 binaries with --no-deps into bench/wheels/ (git-ignored;
# the device tool carries it: carry ["bench/wheels"]), and copies the real clip the media set loops
# (../shared does not travel). Prints the folder's size: it travels within the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python}"
dest=bench/wheels
mkdir -p "$dest"
# shellcheck disable=SC2046
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dest" $("$py" bench/gpu_env.py pins)
clip=../shared/realdata/facenet-examples/video.mp4
if [ -f "$clip" ]; then cp "$clip" "$dest/video.mp4"; else echo "no $clip: the GPU check will draw its clips"; fi
ls -l "$dest"
du -sh "$dest"
