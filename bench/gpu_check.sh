#!/usr/bin/env bash
# The gateway's GPU path on a bare GPU machine, in one prepared procedure (see bench/README.md).
#
# Here (any machine with the shared venv and network to PyPI):
#   bench/gpu_check.sh --plan      the payload plan as JSON (packages, pins, models, part size)
#   bench/gpu_check.sh --dry-run   prove the import closure: Python 3.12 venv with only what the GPU
#                                  machine has + the payload's site on PYTHONPATH; serve; infer; stop
#   bench/gpu_check.sh --pack      build bench/results/gpu_payload/parts/ (<= 60 MiB each) + MANIFEST
# There (the GPU machine, from the repository root; one device call per part):
#   bench/gpu_check.sh stage       keep the carried part(s) in /tmp/infergate-gpu/parts
#   bench/gpu_check.sh run         stage, check, extract, run bench/gpu_check.py -> $OUT/gpu_check.json
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PAYLOAD="${INFERGATE_GPU_PAYLOAD:-$ROOT/bench/results/gpu_payload}"
THERE="${INFERGATE_GPU_TMP:-/tmp/infergate-gpu}"

here_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x /work/main/.venv/bin/python ]]; then echo /work/main/.venv/bin/python
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}

stage() {
  mkdir -p "$THERE/parts"
  shopt -s nullglob
  for part in "$PAYLOAD"/parts/*; do cp -f "$part" "$THERE/parts/"; done
  ls -l "$THERE/parts"
}

run_there() {
  stage
  local parts="$THERE/parts" extracted="$THERE/x"
  [[ -f "$parts/MANIFEST" ]] || { echo "MANIFEST missing: carry it with the last call" >&2; exit 2; }
  local expected actual
  expected="$(awk '$1=="sha256"{print $2}' "$parts/MANIFEST")"
  actual="$(cat "$parts"/payload.tar.xz.part* | sha256sum | cut -d' ' -f1)"
  if [[ "$expected" != "$actual" ]]; then
    echo "parts incomplete: have $(ls "$parts" | grep -c part) of $(awk '$1=="parts"{print $2}' "$parts/MANIFEST")" >&2
    exit 3
  fi
  rm -rf "$extracted" && mkdir -p "$extracted"
  cat "$parts"/payload.tar.xz.part* | xz -d -T0 | tar -x -C "$extracted"
  for folder in site site_gpu model_repo; do  # the layout the archive was made with
    [[ -d "$extracted/$folder" ]] || { echo "payload has no $folder/" >&2; exit 4; }
  done
  # CUDA 13 runtime libraries of the machine's torch install (preload_dlls() finds them too)
  local nvidia
  nvidia="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
  if [[ -n "$nvidia" ]]; then
    LD_LIBRARY_PATH="$(ls -d "$nvidia"/nvidia/*/lib 2>/dev/null | paste -sd:):${LD_LIBRARY_PATH:-}"
    export LD_LIBRARY_PATH
  fi
  export PYTHONPATH="$extracted/site_gpu:$extracted/site:$ROOT"
  export PYTHONNOUSERSITE=1
  local out="${OUT:-$ROOT/bench/results}"
  cd "$ROOT" && python3 bench/gpu_check.py --repo "$extracted/model_repo" --out "$out/gpu_check.json"
}

case "${1:-}" in
  --plan) cd "$ROOT" && PYTHONPATH="$ROOT" "$(here_python)" bench/gpu_payload.py plan ;;
  --dry-run) cd "$ROOT" && PYTHONPATH="$ROOT" "$(here_python)" bench/gpu_payload.py dry-run ;;
  --pack) cd "$ROOT" && PYTHONPATH="$ROOT" "$(here_python)" bench/gpu_payload.py pack ;;
  stage) stage ;;
  run) run_there ;;
  *) sed -n '2,13p' "$0" >&2; exit 64 ;;
esac
