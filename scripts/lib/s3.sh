# shellcheck shell=bash
# S3-compatible server: s3s-fs (a small Rust S3 implementation over a
# directory), built once with cargo. It verifies SigV4 signatures with the
# given key pair, so clients exercise real request signing.

S3S_VERSION="${ATELIER_S3S_VERSION:-0.14.1}"
S3_PORT=29000
S3_ACCESS_KEY=atelier
S3_SECRET_KEY=atelier-secret-key
S3_REGION=us-east-1
S3_BUCKET=atelier-test
S3_HOME="$ATELIER_CACHE/s3s-fs-$S3S_VERSION"
S3_TIMEOUT="${ATELIER_S3_TIMEOUT:-30}"

s3_port() { echo "$S3_PORT"; }
s3_timeout() { echo "$S3_TIMEOUT"; }
s3_stop_timeout() { echo 10; }
s3_installed() { [[ -x "$S3_HOME/bin/s3s-fs" ]]; }

_s3_build() {
    local root="$1" target
    command -v cargo >/dev/null || die "cargo not found (needed to build s3s-fs)"
    # Private target dir (never the project's target/), deleted afterwards: it
    # is ~400 MB and only the binary is needed. Run from the cache dir so no
    # project .cargo/config (target-dir, rustflags) leaks into this build.
    target="$(mktemp -d "${TMPDIR:-/tmp}/s3s-fs-build.XXXXXX")"
    (
        cd "$ATELIER_CACHE" || exit 1
        unset RUSTFLAGS CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR CARGO_ENCODED_RUSTFLAGS
        CARGO_TARGET_DIR="$target" cargo install s3s-fs --version "$S3S_VERSION" \
            --locked --features binary --root "$root" >&2
    )
    local rc=$?
    rm -rf "$target"
    return $rc
}

s3_install() {
    s3_installed && return 0
    log "s3: building s3s-fs $S3S_VERSION with cargo (first run only; takes minutes)"
    install_atomically "$S3_HOME" _s3_build
}

s3_prepare() {
    # s3s-fs maps buckets to top-level directories of its root, so creating
    # the directory is creating the bucket.
    mkdir -p "$1/data/$S3_BUCKET"
}

# Sets CMD (declared local by the caller in scripts/services).
# shellcheck disable=SC2034
s3_cmd() {
    CMD=(env RUST_LOG="${RUST_LOG:-info}" "$S3_HOME/bin/s3s-fs"
        --host 127.0.0.1 --port "$S3_PORT"
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY"
        "$1/data")
}

# Ready = a signed ListBuckets with the test credentials succeeds and lists
# the test bucket (checks auth too, and logs no "access denied" noise).
s3_probe() {
    python3 "$ATELIER_SCRIPTS/lib/s3_probe.py" "http://127.0.0.1:$S3_PORT" \
        "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$S3_REGION" "$S3_BUCKET" >/dev/null 2>&1
}
