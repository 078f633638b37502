#!/usr/bin/env bash
# `make demo`: the embedded digits dataset -> a trained, evaluated model -> a bundle in models/digits/.
# Later steps (serve the bundle, send it requests) are added here as the service grows.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d data/digits ]; then
  imgcls data digits --out data/digits
fi
imgcls train --config configs/digits.yaml
