#!/usr/bin/env bash
# Installs what a fresh machine lacks: system libraries (apt) and the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need_apt=()
dpkg -s libusb-1.0-0 >/dev/null 2>&1 || need_apt+=(libusb-1.0-0)   # open3d links it
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)          # video fixtures, audio tracks of videos, codec diagnosis
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned, so nothing else pulls a different build.
"$VENV/bin/python" -m pip install -q "torch==2.11.*" "torchvision==0.26.*" "torchaudio==2.11.*"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, ray, mlflow; print("torch", torch.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__)'))"
