#!/usr/bin/env bash
# Self-test of scripts/dev.sh on its own ports and state dir: `up` twice is harmless, `status`
# reports both services, `down` leaves no process or port of ours behind.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export WEIR_STATE_DIR; WEIR_STATE_DIR=$(mktemp -d /tmp/weir-selftest.XXXXXX)
export WEIR_BOLT_PORT=27687 WEIR_ARCADEDB_HTTP_PORT=22480 WEIR_NATS_PORT=24222 WEIR_NATS_REUSE=0
export WEIR_KAFKA_PORT=29092
export WEIR_ARCADEDB_HEAP=512m
unset NEO4J_URI NEO4J_USER NEO4J_PASSWORD NATS_URL KAFKA_BROKERS
dev() { bash "$REPO/scripts/dev.sh" "$@"; }
fail() { echo "selftest: FAIL: $*" >&2; dev down >/dev/null 2>&1 || true; exit 1; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

passed=0
dev up 2>/dev/null || fail "first up"
gpid=$(cat "$WEIR_STATE_DIR/arcadedb/pid"); npid=$(cat "$WEIR_STATE_DIR/nats/pid"); kpid=$(cat "$WEIR_STATE_DIR/kafka/pid")
dev up 2>/dev/null || fail "second up"
[ "$(cat "$WEIR_STATE_DIR/arcadedb/pid")" = "$gpid" ] || fail "second up restarted the graph server"
[ "$(cat "$WEIR_STATE_DIR/nats/pid")" = "$npid" ] || fail "second up restarted nats"
[ "$(cat "$WEIR_STATE_DIR/kafka/pid")" = "$kpid" ] || fail "second up restarted the Kafka broker"
passed=$((passed + 1))
st=$(dev status)
grep -q "ArcadeDB running, pid $gpid" <<<"$st" || fail "status misses the graph server: $st"
grep -q "nats-server running, pid $npid" <<<"$st" || fail "status misses nats: $st"
grep -q "tansu running, pid $kpid" <<<"$st" || fail "status misses the Kafka broker: $st"
grep -q "KAFKA_BROKERS=127.0.0.1:$WEIR_KAFKA_PORT" "$WEIR_STATE_DIR/env" || fail "env file lacks KAFKA_BROKERS"
grep -q "NEO4J_PASSWORD=weir-local-dev" "$WEIR_STATE_DIR/env" || fail "env file lacks the password"
# Captured first: `dev env | grep -q` under pipefail fails when grep exits before dev does.
envout=$(dev env 2>&1) || fail "env failed: $envout"
grep -q 'NEO4J_PASSWORD=\*\*\*' <<<"$envout" || fail "env does not mask the password: $envout"
grep -q 'weir-local-dev' <<<"$envout" && fail "env prints the password: $envout"
passed=$((passed + 1))
dev down 2>/dev/null || fail "down"
sleep 0.5
kill -0 "$gpid" 2>/dev/null && fail "graph server pid $gpid still alive after down"
kill -0 "$npid" 2>/dev/null && fail "nats pid $npid still alive after down"
kill -0 "$kpid" 2>/dev/null && fail "tansu pid $kpid still alive after down"
for p in $WEIR_BOLT_PORT $WEIR_ARCADEDB_HTTP_PORT $WEIR_NATS_PORT $WEIR_KAFKA_PORT; do
  port_open "$p" && fail "port $p still open after down"
done
passed=$((passed + 1))
rm -rf "$WEIR_STATE_DIR"
echo "selftest: $passed passed, 0 failed"
