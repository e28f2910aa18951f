#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git; carried to a lent GPU machine with
# carry [".whl"]) the wheels of the packages that device_check.sh needs and
# the device image lacks: the model's and the configs' libraries. The image
# has JAX with CUDA, numpy, scipy, optax, chex, orbax-checkpoint, absl-py,
# PyYAML, tabulate, pytest and pytest-xdist; it has no registry access.
# The versions are those of the development environment. All three are pure
# Python; --python-version/--platform pick what the machine's Python 3.12 on
# x86-64 installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=(
  dm-haiku==0.0.17      # the networks (needs jmp, absl-py, numpy, tabulate)
  jmp==0.0.4            # haiku's mixed-precision policies
  ml-collections==1.1.0 # the experiment configs (needs absl-py, PyYAML)
)
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
