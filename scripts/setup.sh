#!/usr/bin/env bash
# Installs what a fresh machine lacks and makes the venv match uv.lock exactly.
#   1. system packages (apt): libusb-1.0-0 (open3d links it), ffmpeg (video fixtures, audio tracks),
#      dataset-fashion-mnist and sonic-pi-samples (real labelled images and audio for the probes)
#   2. uv at the version pyproject.toml requires, from hash-pinned scripts/uv-requirements.txt
#   3. `uv sync --locked`: every package at the lock's version and hash (extraneous ones removed);
#      fails, rather than re-resolving, when pyproject.toml and uv.lock disagree (then: make lock)
#   4. polymae doctor: the venv matches the lock and every plugin's native library loads
# Idempotent and fast when nothing changed (a few seconds), so `make test` runs it every time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
UV_VERSION=$(sed -n 's/^required-version = "==\(.*\)"/\1/p' pyproject.toml)
TOOLS=.tools/uv-$UV_VERSION

need_apt=()
dpkg -s libusb-1.0-0 >/dev/null 2>&1 || need_apt+=(libusb-1.0-0)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
dpkg -s sonic-pi-samples >/dev/null 2>&1 || need_apt+=(sonic-pi-samples)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# The interpreter itself, not a shim (pyenv's): uv rebuilds a venv whose base interpreter differs.
PYTHON=$("$(command -v python3.11 || command -v python3)" -c 'import sys; print(sys.executable)')
if [ ! -x "$TOOLS/bin/uv" ]; then
  echo "setup: installing uv $UV_VERSION into $TOOLS"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
    --target "$TOOLS" -r scripts/uv-requirements.txt
fi
UV="$TOOLS/bin/uv"

# uv never reads pip's config; Python comes from this machine, never downloaded.
export UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never
"$UV" sync --locked --extra dev --python "$PYTHON" --quiet
# The venv holds exactly the lock's versions. (A freeze diff, not `uv sync --check`: decord's only
# wheel says py3-none in its name but cp36 inside, so uv's check calls it outdated forever.)
locked() { "$UV" export --locked --extra dev --no-emit-project --no-hashes --no-header --no-annotate --quiet |
           grep -v '^#' | sed 's/ *;.*//' | sort; }
if ! drift=$(diff <(locked) <("$UV" pip freeze --python "$VENV" --exclude-editable --quiet | sort)); then
  echo "setup: $VENV does not match uv.lock (< lock, > venv):" >&2; echo "$drift" >&2; exit 1
fi
# Load every native library once per venv build (~30 s: torch's import dominates); `polymae doctor`
# runs the same checks at any time.
stamp="$VENV/.doctor-ok"; want=$(cat uv.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m polymae.doctor
  echo "$want" > "$stamp"
fi
# The probe example's labelled images: a seeded Fashion-MNIST subset as PNGs (gitignored), made
# once from the Debian package (examples/probe_fashion_mnist.yaml).
if [ ! -f examples/data/fashion-mnist/labels.csv ]; then
  "$VENV/bin/python" -m polymae.probe.fashion_mnist examples/data/fashion-mnist
fi
