#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on 127.0.0.1,
# assembled from Maven Central. Used by the test suite, .ci/run and local development.
#
#   deploy/kafka/kafka.sh start    fetch the jars (cached), format a fresh data dir, start, wait until ready
#   deploy/kafka/kafka.sh stop     stop the broker started from KAFKA_RUN_DIR and delete its data dir
#   deploy/kafka/kafka.sh status   say whether that broker runs; exit 0 if it does, 3 if not
#   deploy/kafka/kafka.sh fetch    only fetch the jars into the cache
#
# Environment (all optional):
#   KAFKA_PORT              client port                              (default 9092)
#   KAFKA_CONTROLLER_PORT   controller port                          (default 9093)
#   KAFKA_RUN_DIR           pid file, data dir, config and log        (default <repo>/.kafka-run)
#   KAFKA_CACHE_DIR         the broker's jars                         (default <repo>/.cache/kafka)
#   KAFKA_READY_TIMEOUT     seconds to wait for the broker            (default 90)
#   KAFKA_HEAP_OPTS         JVM heap                                  (default -Xms512m -Xmx1g)
#   PYTHON                  a Python with kafka-python for the readiness check (default python3)
#   KAFKA_KEEP_DATA=1       stop keeps the data dir and start reuses it (to test broker outages)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
RUN_DIR="${KAFKA_RUN_DIR:-$REPO/.kafka-run}"
CACHE_DIR="${KAFKA_CACHE_DIR:-$REPO/.cache/kafka}"
READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-90}"
HEAP="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
PYTHON="${PYTHON:-python3}"
# Only loopback: a test broker must never be reachable from another host.
HOST=127.0.0.1

PID_FILE="$RUN_DIR/kafka.pid"
DATA_DIR="$RUN_DIR/data"
LOG_FILE="$RUN_DIR/kafka.log"
PROPS="$RUN_DIR/server.properties"
# Bump when pom.xml changes so that a stale cache is fetched again.
STAMP="$CACHE_DIR/.complete-$(cksum <"$HERE/pom.xml" | cut -d' ' -f1)"

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

need_tools() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "java and mvn are needed to run the broker; install the packages: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})"
  fi
}

fetch() {
  if [ -f "$STAMP" ]; then return 0; fi
  need_tools
  say "fetching the broker's jars into $CACHE_DIR (first run only)"
  rm -rf "$CACHE_DIR/lib"
  mkdir -p "$CACHE_DIR"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$CACHE_DIR/lib" >&2 \
    || die "mvn could not fetch the broker's jars (see above)"
  rm -f "$CACHE_DIR"/.complete-*
  touch "$STAMP"
}

port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_props() {
  cat >"$PROPS" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# The default (128 MiB) is a large share of a 1 GiB heap on a 2-core test machine.
log.cleaner.dedupe.buffer.size=33554432
# Tests check log compaction; let the cleaner look often.
log.cleaner.backoff.ms=1000
EOF
}

ready_check() {
  # The client port opens once the broker serves; an admin client that bootstraps proves it answers.
  "$PYTHON" - "$HOST:$PORT" <<'EOF' 2>/dev/null
import sys
try:
    from kafka import KafkaAdminClient
except ImportError:
    sys.exit(0)  # no kafka-python here: the open port is the best check we have
try:
    KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000).close()
except Exception:
    sys.exit(1)
EOF
}

start() {
  if pid="$(running_pid)"; then
    say "a broker from $RUN_DIR already runs (pid $pid) on $HOST:$PORT"
    return 0
  fi
  if port_open "$PORT" || port_open "$CPORT"; then
    die "port $PORT or $CPORT on $HOST is taken (a leftover broker?); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
  fi
  need_tools
  fetch
  mkdir -p "$RUN_DIR"
  write_props
  local cp="$CACHE_DIR/lib/*"
  local log4j="-Dlog4j2.configurationFile=$HERE/log4j2.properties"
  if [ "${KAFKA_KEEP_DATA:-0}" = 1 ] && [ -f "$DATA_DIR/meta.properties" ]; then
    say "reusing the data in $DATA_DIR"
  else
    rm -rf "$DATA_DIR"
    local cid
    cid="$(java -cp "$cp" $log4j kafka.tools.StorageTool random-uuid 2>>"$LOG_FILE" | tail -n1)"
    [ -n "$cid" ] || die "could not make a cluster id; see $LOG_FILE"
    java -cp "$cp" $log4j kafka.tools.StorageTool format --standalone -t "$cid" -c "$PROPS" >>"$LOG_FILE" 2>&1 \
      || { tail -n 30 "$LOG_FILE" >&2; die "formatting $DATA_DIR failed"; }
  fi
  local t0=$SECONDS
  # setsid: the broker gets its own session, so a Ctrl-C in the caller's terminal does not kill it half-way.
  setsid java $HEAP -XX:+UseG1GC -Djava.awt.headless=true $log4j -cp "$cp" kafka.Kafka "$PROPS" \
    >>"$LOG_FILE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_FILE"
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "the broker exited during start-up; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2
      rm -f "$PID_FILE"
      exit 1
    fi
    if port_open "$PORT" && ready_check; then break; fi
    if [ $((SECONDS - t0)) -ge "$READY_TIMEOUT" ]; then
      say "the broker was not ready after ${READY_TIMEOUT}s; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  say "broker ready on $HOST:$PORT (pid $pid, $((SECONDS - t0))s)"
  echo "$HOST:$PORT"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "the broker did not stop within 30 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
    say "stopped the broker (pid $pid)"
  fi
  rm -f "$PID_FILE"
  if [ "${KAFKA_KEEP_DATA:-0}" != 1 ]; then
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
  fetch) fetch ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
