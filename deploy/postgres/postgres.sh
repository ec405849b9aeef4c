#!/usr/bin/env bash
# A single PostgreSQL server with the pgvector extension on 127.0.0.1, for the test suite, .ci/run,
# the benchmarks and local development of `stream-nudge sink`. Not a production set-up: it trusts
# every loopback connection and runs without fsync.
#
#   deploy/postgres/postgres.sh start    initialise a fresh data dir, start, wait until ready; prints the DSN
#   deploy/postgres/postgres.sh stop     stop the server started from PG_RUN_DIR (by its PID) and delete its data
#   deploy/postgres/postgres.sh status   say whether that server runs; exit 0 if it does, 3 if not
#
# The binaries: PG_BIN if set; else those of the pgserver wheel (PostgreSQL with pgvector, a dev
# dependency: pip install -e '.[dev]'); else the system's (pg_config on PATH) if pgvector is
# installed there (Debian: apt-get install postgresql-15-pgvector).
#
# Environment (all optional):
#   PG_PORT            port on 127.0.0.1                         (default 5432)
#   PG_RUN_DIR         pid file, data dir and log                 (default <repo>/.pg-run)
#   PG_BIN             directory holding initdb, pg_ctl, postgres
#   PG_READY_TIMEOUT   seconds to wait for the server             (default 60)
#   PG_OS_USER         the system user the server runs as when this script runs as root
#                      (PostgreSQL refuses to run as root; created if absent; default stream-nudge-pg)
#   PYTHON             a Python that may have the pgserver wheel  (default python3)
#   PG_KEEP_DATA=1     stop keeps the data dir and start reuses it (to test a database outage)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PORT="${PG_PORT:-5432}"
RUN_DIR="${PG_RUN_DIR:-$REPO/.pg-run}"
READY_TIMEOUT="${PG_READY_TIMEOUT:-60}"
PYTHON="${PYTHON:-python3}"
OS_USER="${PG_OS_USER:-stream-nudge-pg}"
# Only loopback: a test server must never be reachable from another host.
HOST=127.0.0.1

PID_FILE="$RUN_DIR/postgres.pid"
DATA_DIR="$RUN_DIR/data"
LOG_FILE="$RUN_DIR/postgres.log"

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/postgres" ] || die "PG_BIN=$PG_BIN holds no postgres binary"
    echo "$PG_BIN"
    return 0
  fi
  local wheel
  wheel="$("$PYTHON" - <<'EOF' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("pgserver")
if spec and spec.submodule_search_locations:
    print(os.path.join(spec.submodule_search_locations[0], "pginstall", "bin"))
EOF
)"
  if [ -n "$wheel" ] && [ -x "$wheel/postgres" ]; then
    echo "$wheel"
    return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    local bindir share
    bindir="$(pg_config --bindir)"
    share="$(pg_config --sharedir)"
    if [ -x "$bindir/postgres" ] && [ -f "$share/extension/vector.control" ]; then
      echo "$bindir"
      return 0
    fi
  fi
  die "no PostgreSQL with pgvector found: install the dev dependencies (pip install -e '.[dev]', which brings the pgserver wheel), set PG_BIN, or install the system's pgvector (apt-get install postgresql-15-pgvector)"
}

# The binaries where the server's user can run them: as they are, or (a checkout in a directory
# closed to others, as mktemp -d makes) a copy of their installation in the run dir.
reachable_bin() {
  local bin="$1"
  if [ "$(id -u)" != 0 ] || as_server test -x "$bin/postgres"; then
    echo "$bin"
    return 0
  fi
  # The wheel's binaries find their shared libraries at $ORIGIN/../../../pgserver.libs: keep
  # that layout (<copy>/pgserver/pginstall and <copy>/pgserver.libs).
  local prefix root="$RUN_DIR/pg" copy="$RUN_DIR/pg/pgserver/pginstall"
  prefix="$(cd "$bin/.." && pwd)"
  if [ ! -x "$copy/bin/postgres" ]; then
    say "$OS_USER cannot reach $bin; copying the installation to $copy"
    rm -rf "$root"
    mkdir -p "$root/pgserver"
    cp -a "$prefix" "$copy"
    if [ -d "$prefix/../../pgserver.libs" ]; then
      cp -a "$prefix/../../pgserver.libs" "$root/pgserver.libs"
    fi
    chmod -R a+rX "$root"
  fi
  chmod a+rx "$RUN_DIR"
  as_server test -x "$copy/bin/postgres" \
    || die "the user $OS_USER cannot run $copy/bin/postgres either (is $RUN_DIR inside a closed directory?); set PG_RUN_DIR elsewhere"
  echo "$copy/bin"
}

# Run a command as the server's user (ourselves unless we are root).
as_server() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$OS_USER" -- "$@"
  else
    "$@"
  fi
}

server_user() {
  [ "$(id -u)" = 0 ] || return 0
  if ! id "$OS_USER" >/dev/null 2>&1; then
    say "creating the system user $OS_USER to run PostgreSQL as (it refuses to run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$OS_USER" \
      || die "could not create the user $OS_USER; set PG_OS_USER to an existing one"
  fi
}

port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(head -n1 "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  if pid="$(running_pid)"; then
    say "a server from $RUN_DIR already runs (pid $pid) on $HOST:$PORT"
    echo "postgresql://postgres@$HOST:$PORT/postgres"
    return 0
  fi
  if port_open "$PORT"; then
    die "port $PORT on $HOST is taken (a leftover server?); stop it or set PG_PORT"
  fi
  local bin
  bin="$(find_bin)"
  server_user
  mkdir -p "$RUN_DIR"
  bin="$(reachable_bin "$bin")"
  touch "$LOG_FILE"
  if [ "${PG_KEEP_DATA:-0}" = 1 ] && [ -f "$DATA_DIR/PG_VERSION" ]; then
    say "reusing the data in $DATA_DIR"
  else
    fresh_data "$bin"
  fi
  launch "$bin"
}

fresh_data() {
  local bin="$1"
  rm -rf "$DATA_DIR"
  mkdir -p "$DATA_DIR"
  if [ "$(id -u)" = 0 ]; then
    chown "$OS_USER" "$DATA_DIR" "$LOG_FILE"
    # The server's user must reach its data dir through every parent directory.
    as_server test -w "$DATA_DIR" \
      || die "the user $OS_USER cannot reach $DATA_DIR (a parent directory is closed to others?); set PG_RUN_DIR elsewhere"
  fi
  as_server "$bin/initdb" -D "$DATA_DIR" -U postgres --auth=trust -E UTF8 --no-locale >>"$LOG_FILE" 2>&1 \
    || { tail -n 30 "$LOG_FILE" >&2; die "initdb of $DATA_DIR failed"; }
  cat >>"$DATA_DIR/postgresql.conf" <<EOF
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = ''
# A test server: durability is not what it is for.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
shared_buffers = 256MB
EOF
}

launch() {
  local bin="$1"
  local t0=$SECONDS
  # setsid: the server gets its own session, so a Ctrl-C in the caller's terminal does not stop it half-way.
  as_server setsid "$bin/postgres" -D "$DATA_DIR" >>"$LOG_FILE" 2>&1 </dev/null &
  local launcher=$!
  local pid=""
  while :; do
    if [ -z "$pid" ] && [ -f "$DATA_DIR/postmaster.pid" ]; then
      pid="$(head -n1 "$DATA_DIR/postmaster.pid")"
      echo "$pid" >"$PID_FILE"
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null || { [ -z "$pid" ] && ! kill -0 "$launcher" 2>/dev/null; }; then
      say "the server exited during start-up; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2
      rm -f "$PID_FILE"
      exit 1
    fi
    if [ -n "$pid" ] && "$bin/pg_isready" -q -h "$HOST" -p "$PORT" -U postgres; then break; fi
    if [ $((SECONDS - t0)) -ge "$READY_TIMEOUT" ]; then
      say "the server was not ready after ${READY_TIMEOUT}s; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2
      stop
      exit 1
    fi
    sleep 0.2
  done
  say "server ready on $HOST:$PORT (pid $pid, $((SECONDS - t0))s, $("$bin/postgres" --version))"
  echo "postgresql://postgres@$HOST:$PORT/postgres"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    # SIGINT: PostgreSQL's fast shutdown (ends the sessions, no waiting for clients).
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "the server did not stop within 30 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
    say "stopped the server (pid $pid)"
  fi
  rm -f "$PID_FILE"
  if [ "${PG_KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$DATA_DIR"
  fi
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "running: pid $pid, $HOST:$PORT, run dir $RUN_DIR"
  else
    echo "not running (run dir $RUN_DIR)"
    exit 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
