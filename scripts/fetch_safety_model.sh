#!/usr/bin/env bash
# The image-safety model (imagegen/safety.py): nsfwjs's npm package (MIT), weights included,
# unpacked once into ~/.cache/imagegen/nsfwjs-<version>/package. npm checks the tarball's
# integrity; nothing here runs the package's code, and Node.js is not needed at run time.
set -euo pipefail
version=4.4.0
dest="${IMAGEGEN_SAFETY_MODEL_CACHE:-$HOME/.cache/imagegen}/nsfwjs-$version"
[ -f "$dest/package/dist/models/mobilenet_v2/model.min.js" ] && exit 0
command -v npm >/dev/null 2>&1 || {
  echo "error: npm is needed once to fetch the image-safety model (Debian: apt-get install npm)" >&2
  exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "nsfwjs@$version" >/dev/null)
mkdir -p "$dest"
tar -xzf "$work/nsfwjs-$version.tgz" -C "$dest" package/package.json package/LICENSE \
  package/dist/models/mobilenet_v2
echo "image-safety model: $dest/package" >&2
