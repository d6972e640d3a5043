# shellcheck shell=bash
# Shared helpers for the scripts in scripts/. Sourced, never executed.
#
# Layout (overridable through the environment so CI can persist the cache):
#   $ATELIER_CACHE/<svc>-<version>/   installs (jars, binaries); reused across runs
#   $ATELIER_RUN/<svc>/               runtime state: data/, conf/, <svc>.log, <svc>.pid
set -euo pipefail

ATELIER_CACHE="${ATELIER_CACHE:-$HOME/.cache/atelier}"
ATELIER_RUN="${ATELIER_RUN:-$ATELIER_CACHE/run}"
export ATELIER_CACHE ATELIER_RUN

ATELIER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ATELIER_SCRIPTS

# Progress goes to stderr so commands like `services env` keep a clean stdout.
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# with_lock NAME CMD...: run CMD holding an exclusive lock, so concurrent
# callers (parallel test binaries, `start all`) never install or launch the
# same thing twice. The lock fd (9) must not leak into daemons; launchers close it.
with_lock() {
    local name="$1"; shift
    mkdir -p "$ATELIER_CACHE/locks"
    (
        flock -w 1800 9 || die "timed out waiting for lock '$name'"
        "$@"
    ) 9>"$ATELIER_CACHE/locks/$name.lock"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# live_pid PIDFILE: print the pid if the file names a live process.
live_pid() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found (Java 17+ is required)"
    fi
}

# Fail early with a clear message instead of an obscure JVM error later.
require_java17() {
    local java v
    java="$(java_bin)"
    v="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    [[ "${v%%.*}" -ge 17 ]] 2>/dev/null || die "Java 17+ required, found '$v' at $java"
}

# mvn_fetch_jars DEST_DIR group:artifact:version...
# Copies the artifacts and their runtime dependency closure into DEST_DIR as
# plain jars (a `java -cp 'DEST_DIR/*'` classpath). Uses a throwaway pom so
# Maven does the dependency resolution; ~/.m2 is Maven's own download cache.
mvn_fetch_jars() {
    local dest="$1"; shift
    command -v mvn >/dev/null || die "mvn not found (needed to download jars from Maven Central)"
    local work deps="" c g a v
    work="$(mktemp -d)"
    for c in "$@"; do
        IFS=: read -r g a v <<<"$c"
        deps+="<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
    done
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>atelier.local</groupId><artifactId>fetch</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
POM
    mkdir -p "$dest"
    # Pin the plugin version: the default bound by Maven 3.8 is old and slow.
    # Serialise Maven runs: concurrent writers into one ~/.m2 can corrupt it.
    with_lock maven mvn -B -q -Dstyle.color=never -f "$work/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$dest" >&2
    rm -rf "$work"
}

# install_atomically DIR FUNC: run FUNC STAGING_DIR to build an install, then
# move it to DIR. An interrupted install leaves no half-filled DIR behind, so
# "DIR exists" is a reliable "installed" check.
install_atomically() {
    local dir="$1" fn="$2" tmp
    [[ -d "$dir" ]] && return 0
    tmp="$dir.partial.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! "$fn" "$tmp"; then
        rm -rf "$tmp"
        die "install into $dir failed"
    fi
    mv "$tmp" "$dir"
}
