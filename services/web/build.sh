#!/usr/bin/env bash
# Vendor the front-end dependencies: install node_modules from package-lock.json when it is
# missing, then copy MapLibre GL JS into cliprs_web/static/vendor/ (git-ignored), so the page
# loads nothing from a CDN. Once node_modules exists this runs offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi

src=node_modules/maplibre-gl
dest=cliprs_web/static/vendor
mkdir -p "$dest"
cp "$src/dist/maplibre-gl.js" "$src/dist/maplibre-gl.css" "$dest/"
cp "$src/LICENSE.txt" "$dest/maplibre-gl.LICENSE.txt"
version=$(node -p "require('./$src/package.json').version")
echo "vendored maplibre-gl $version into $dest/"
