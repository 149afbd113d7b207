#!/usr/bin/env bash
# Install what the platform and its tests need on a Debian machine (idempotent, fast when done):
# system packages, the Python venv with every package, the CLIP vocabulary wheel, the web bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
VENV=.venv

apt_missing=()
for pkg in postgresql-15 postgresql-15-postgis-3 redis-server nodejs npm chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$pkg")
done
# Node may come from elsewhere (nvm, NodeSource): only ask apt for it when there is no npm at all.
if command -v npm >/dev/null 2>&1; then
  apt_missing=("${apt_missing[@]/nodejs}"); apt_missing=("${apt_missing[@]/npm}")
fi
apt_missing=($(printf '%s\n' "${apt_missing[@]}" | grep -v '^$' || true))
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi

# Reinstall the Python packages only when a pyproject or the dev requirements changed.
stamp="$VENV/.cliprs-installed-$(cat libs/*/pyproject.toml tools/pyproject.toml services/*/pyproject.toml requirements-dev.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> installing Python packages into $VENV"
  # torch first and pinned: this version has a local CPU wheel; anything else pulls CUDA.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e libs/core -e libs/http -e libs/index -e libs/model -e libs/raster -e libs/testing -e tools \
    -e services/tiler -e services/embedder -e services/indexer -e services/search-api -e services/web \
    -r requirements-dev.txt
  rm -f "$VENV"/.cliprs-installed-*
  touch "$stamp"
fi

# The real CLIP BPE vocabulary ships inside the open_clip wheel; fetch the wheel, never install it.
if ! ls .cache/wheels/open_clip_torch-*.whl >/dev/null 2>&1; then
  echo "==> fetching the CLIP vocabulary (open_clip_torch wheel, not installed)"
  "$VENV/bin/pip" download -q --no-deps -d .cache/wheels open_clip_torch==3.3.0
fi

if [ ! -f services/web/cliprs_web/static/vendor/maplibre-gl.js ]; then
  echo "==> building the web bundle"
  services/web/build.sh
fi
