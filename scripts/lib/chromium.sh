# shellcheck shell=bash
# What the browser test needs besides atelier: Debian's Chromium and the
# test's Node modules (playwright-core, pinned in tests/browser). Sourced
# after common.sh, never executed.
#
#   ensure_chromium          installs the `chromium` package when the binary is missing
#   ensure_browser_modules   `npm ci` in tests/browser unless node_modules matches the lock
#
# Both keep their downloads under $ATELIER_CACHE (apt/, npm/), so a CI cache
# of that directory makes a fresh machine's second run download nothing.

# Where the test finds Chromium; another path (a local build) may be given.
CHROMIUM="${ATELIER_CHROMIUM:-/usr/bin/chromium}"
export CHROMIUM

# as_root CMD...: runs CMD as root: directly when root, else through sudo
# when it needs no password (a CI runner); fails otherwise, since a prompt
# would hang an unattended run.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        sudo -n "$@"
    else
        die "installing Chromium needs root: run as root, allow passwordless sudo, or install it yourself (apt-get install chromium)"
    fi
}

install_chromium() {
    [[ -x "$CHROMIUM" ]] && return 0
    # Debian's package puts it at one place only: another path is the caller's to provide.
    [[ "$CHROMIUM" == /usr/bin/chromium ]] \
        || die "ATELIER_CHROMIUM=$CHROMIUM is not an executable"
    command -v apt-get > /dev/null \
        || die "$CHROMIUM is missing and there is no apt-get: install Chromium, or point ATELIER_CHROMIUM at its binary"
    local debs="$ATELIER_CACHE/apt"
    # apt wants partial/ next to the archives it downloads.
    mkdir -p "$debs/partial"
    log "chromium: installing Debian's package (downloads cached in $debs)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
        || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dir::Cache::archives="$debs" chromium >&2 \
        || die "apt-get install chromium failed"
    [[ -x "$CHROMIUM" ]] || die "the chromium package is installed but $CHROMIUM is not there"
}

ensure_chromium() {
    # Concurrent runs on one machine must not both drive apt.
    with_lock chromium install_chromium
    # (Debian's launcher script chatters on stderr; the version line is what counts.)
    local version
    version="$("$CHROMIUM" --version 2> /dev/null)" || die "$CHROMIUM does not run"
    log "chromium: $version"
}

install_browser_modules() {
    local dir="$ATELIER_SCRIPTS/../tests/browser"
    command -v npm > /dev/null || die "npm is missing: the browser test needs Node.js 20+ with npm"
    # The lock and the Node version decide what node_modules holds; a stamp
    # of both skips `npm ci` (which always deletes and reinstalls) when
    # nothing changed.
    local want have=""
    want="$( (cat "$dir/package-lock.json"; node --version) | sha256sum | cut -c1-16)"
    [[ -f "$dir/node_modules/.atelier-stamp" ]] && have="$(cat "$dir/node_modules/.atelier-stamp")"
    [[ "$want" == "$have" ]] && return 0
    log "browser test: npm ci in tests/browser (cache in $ATELIER_CACHE/npm)"
    (cd "$dir" && npm ci --cache "$ATELIER_CACHE/npm" --prefer-offline --no-audit --no-fund >&2) \
        || die "npm ci in tests/browser failed"
    echo "$want" > "$dir/node_modules/.atelier-stamp"
}

ensure_browser_modules() {
    with_lock browser-modules install_browser_modules
}
