#!/usr/bin/env bash
# The browser side: builds the demo page into web/dist, serves it, or tests it.
#
#   bash scripts/web.sh build        # web/dist: index.html, main.js, pkg/ (wasm-bindgen), example
#   bash scripts/web.sh serve [PORT] # build, then serve on http://127.0.0.1:PORT (default 8000)
#   bash scripts/web.sh test         # the browser tests (tests/web.rs) and the page test, headless
#   bash scripts/web.sh tools        # installs the wasm32 target and the matching wasm-bindgen-cli
#
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at the exact version of the
# wasm-bindgen crate in Cargo.lock (it says how to install both); `test` also needs Chromium and
# ChromeDriver (Debian: apt-get install chromium chromium-driver) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

wanted=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
need_tools() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        echo "error: the wasm32 target is missing: rustup target add wasm32-unknown-unknown (or: bash scripts/web.sh tools)" >&2
        exit 1
    fi
    local have
    have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
    if [ "$have" != "$wanted" ]; then
        echo "error: wasm-bindgen-cli $wanted is needed (Cargo.lock's wasm-bindgen), found '${have:-none}':" >&2
        echo "       cargo install wasm-bindgen-cli --version $wanted (or: bash scripts/web.sh tools)" >&2
        exit 1
    fi
}

build() {
    need_tools
    cargo build -p contextual-attention-web --target wasm32-unknown-unknown ${PROFILE_FLAG:-}
    local profile_dir=debug
    [ "${PROFILE_FLAG:-}" = "--release" ] && profile_dir=release
    rm -rf web/dist.tmp
    mkdir -p web/dist.tmp
    wasm-bindgen --target web --no-typescript --out-dir web/dist.tmp/pkg \
        "target/wasm32-unknown-unknown/$profile_dir/contextual_attention_web.wasm"
    cp web/index.html web/main.js web/worker.js web/dist.tmp/
    cp assets/brick.png web/dist.tmp/example.png
    cp web/example_mask.png web/dist.tmp/example_mask.png
    rm -rf web/dist
    mv web/dist.tmp web/dist
    echo "built web/dist ($(du -sh web/dist/pkg | cut -f1) of WebAssembly and glue)"
}

serve() {
    local port="${1:-8000}"
    echo "serving web/dist on http://127.0.0.1:$port/ (Ctrl-C stops)"
    exec python3 -m http.server --bind 127.0.0.1 --directory web/dist "$port"
}

# The CLI is installed without --locked, which is how it builds with this toolchain here.
install_tools() {
    rustup target add wasm32-unknown-unknown
    if [ "$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }')" != "$wanted" ]; then
        cargo install wasm-bindgen-cli --version "$wanted"
    fi
}

case "${1:-build}" in
    tools) install_tools ;;
    build) build ;;
    serve) build; serve "${2:-8000}" ;;
    test)
        need_tools
        export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
        # SwiftShader is slow: the runner's 20 s default would cut the goldens short.
        export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}"
        echo "== browser tests (tests/web.rs) in headless Chromium, on the adapter it offers"
        # No -q: cargo would pass --quiet on to the runner, which rejects it.
        cargo test --target wasm32-unknown-unknown --no-default-features --features webgpu --test web -- --nocapture
        build
        echo "== the demo page, driven by WebDriver"
        "${PYTHON:-python3}" web/test_page.py
        ;;
    *) echo "usage: bash scripts/web.sh [build | serve [PORT] | test | tools]" >&2; exit 2 ;;
esac
