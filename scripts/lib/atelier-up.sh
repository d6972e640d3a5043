# shellcheck shell=bash
# Runs `atelier up` for a script's test (the browser test, the API fuzzer):
# on the embedded defaults whatever the caller's shell points at (no
# configuration file, no ATELIER_SECTION__FIELD or librdkafka variables from
# the caller: scripts/test exports the real services'), in its own data
# directory, on a free port. Sourced after common.sh.
#
#   atelier_up BIN DATA [NAME=VALUE...]   start; sets ATELIER_URL, ATELIER_PID
#   atelier_token USER                    a token the server accepts
#   atelier_down                          SIGTERM, then SIGKILL past 15 s

ATELIER_PID=""
ATELIER_URL=""
ATELIER_BIN=""
ATELIER_DATA=""
_atelier_isolated=()

atelier_up() {
    ATELIER_BIN="$1"
    ATELIER_DATA="$2"
    shift 2
    _atelier_isolated=(env -u ATELIER_CONFIG)
    local name
    while read -r name; do
        _atelier_isolated+=(-u "$name")
    done < <(compgen -e | grep -E '^ATELIER_([A-Z0-9_]+__|KAFKA_PROP_)' || true)
    _atelier_isolated+=(ATELIER_DATA_DIR="$ATELIER_DATA" "$@")
    # From the data directory: an atelier.toml in the caller's directory must
    # not apply either.
    (cd "$ATELIER_DATA" && exec "${_atelier_isolated[@]}" "$ATELIER_BIN" up --listen 127.0.0.1:0 \
        > up.out 2> up.err) &
    ATELIER_PID=$!
    # The banner names the address once the listener is bound (port 0: the
    # kernel picked it) and the models are published.
    local _
    for _ in $(seq 1200); do
        ATELIER_URL="$(sed -n 's|^ *API *\(http://[0-9.:]*\)$|\1|p' "$ATELIER_DATA/up.out" 2> /dev/null || true)"
        [[ -n "$ATELIER_URL" ]] && return 0
        if ! kill -0 "$ATELIER_PID" 2> /dev/null; then
            cat "$ATELIER_DATA/up.err" >&2
            die "atelier up exited before it was ready"
        fi
        sleep 0.1
    done
    die "atelier up printed no address within 120 s"
}

atelier_token() {
    (cd "$ATELIER_DATA" && "${_atelier_isolated[@]}" "$ATELIER_BIN" token --as "$1")
}

atelier_down() {
    if [[ -n "$ATELIER_PID" ]] && kill -0 "$ATELIER_PID" 2> /dev/null; then
        kill -TERM "$ATELIER_PID" 2> /dev/null || true
        # It drains on SIGTERM; past 15 s it is stuck, and the test is over.
        local _
        for _ in $(seq 150); do
            kill -0 "$ATELIER_PID" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$ATELIER_PID" 2> /dev/null || true
        wait "$ATELIER_PID" 2> /dev/null || true
    fi
}
