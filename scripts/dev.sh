#!/usr/bin/env bash
# Weir's one entry point for local services, the main job and the test suite.
#
#   scripts/dev.sh up       install what is missing, start the graph server, NATS and a Kafka
#                           broker (tansu, memory store) on 127.0.0.1
#   scripts/dev.sh down     stop exactly what `up` started (by pid)
#   scripts/dev.sh status   say what runs where
#   scripts/dev.sh env      print the settings `up` resolved (password masked)
#   scripts/dev.sh demo     the main job: services up, ingest the example dataset, serve
#   scripts/dev.sh test     services up, then fmt check, clippy -D warnings, nextest, doctests,
#                           and the web console in a real browser (Debian chromium, installed if missing)
#   scripts/dev.sh console-build   rebuild the web console's assets from the lockfile (npm ci, vite)
#   scripts/dev.sh console-e2e     only the browser test of the console and GraphiQL (services up, chromium)
#
# Settings (environment):
#   NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD   use your own Bolt server instead of a local ArcadeDB
#   NATS_URL                                  use your own NATS (JetStream enabled) instead
#   KAFKA_BROKERS                             use your own Kafka brokers (host:port,...) instead
#   WEIR_BOLT_PORT (17687), WEIR_ARCADEDB_HTTP_PORT (12480), WEIR_NATS_PORT (14222),
#   WEIR_KAFKA_PORT (19092)
#   WEIR_STATE_DIR (<repo>/.weir): pid files, logs, data; WEIR_CACHE_DIR (~/.cache/weir): the
#   venv and the tansu broker (built once with cargo install, about 8 min on 2 cores)
#   WEIR_ARCADEDB_HEAP (1g): graph server heap
#   WEIR_NATS_REUSE (1): 0 = never reuse a NATS already at 127.0.0.1:4222, start our own
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${WEIR_STATE_DIR:-$REPO/.weir}
CACHE_DIR=${WEIR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}
BOLT_PORT=${WEIR_BOLT_PORT:-17687}
ARCADE_HTTP_PORT=${WEIR_ARCADEDB_HTTP_PORT:-12480}
NATS_PORT=${WEIR_NATS_PORT:-14222}
KAFKA_PORT=${WEIR_KAFKA_PORT:-19092}
ARCADE_HEAP=${WEIR_ARCADEDB_HEAP:-1g}
ARCADEDB_VERSION=26.10.2.post1
NEO4J_PY_VERSION=6.4.1
VENV=$CACHE_DIR/venv-arcadedb-$ARCADEDB_VERSION
# tansu: a Kafka-protocol broker from crates.io (no registry ships a Kafka or Redpanda binary).
TANSU_VERSION=0.6.0
TANSU_DIR=$CACHE_DIR/tansu-$TANSU_VERSION
TANSU_BIN=$TANSU_DIR/bin/tansu
LOCAL_PASSWORD_DEFAULT=weir-local-dev

log() { printf '[dev] %s\n' "$*" >&2; }
die() { printf '[dev] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# helpers

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
read_pid() { [ -f "$1" ] && cat "$1" || true; }

port_open() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

url_hostport() { # strips scheme, credentials and path: nats://u:p@h:4222/x -> h:4222
  local u=${1#*://}
  u=${u##*@}
  u=${u%%/*}
  printf '%s' "$u"
}

# The local graph server is ours unless the user gave NEO4J_URI.
graph_is_external() { [ -n "${NEO4J_URI:-}" ]; }

graph_uri() { if graph_is_external; then printf '%s' "$NEO4J_URI"; else printf 'bolt://127.0.0.1:%s' "$BOLT_PORT"; fi; }
graph_user() { printf '%s' "${NEO4J_USER:-root}"; }
graph_password() { printf '%s' "${NEO4J_PASSWORD:-$LOCAL_PASSWORD_DEFAULT}"; }

# ---------------------------------------------------------------------------------------------
# python venv with the ArcadeDB server and the neo4j driver (used only for the readiness probe)

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.complete" ]; then return; fi
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$VENV"
  mkdir -p "$CACHE_DIR"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  log "installing arcadedb-embedded==$ARCADEDB_VERSION and neo4j==$NEO4J_PY_VERSION into $VENV"
  # --no-deps: jpype1 is only needed by the package's Python bindings, which we do not use.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
    "arcadedb-embedded==$ARCADEDB_VERSION" "neo4j==$NEO4J_PY_VERSION"
  touch "$VENV/.complete"
}

arcade_home() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | sed 's|$|/arcadedb_embedded|'
}

bolt_ping() { # uri user password -> prints server agent, exit 0 when `RETURN 1` answers 1
  NEO4J_URI=$1 NEO4J_USER=$2 NEO4J_PASSWORD=$3 "$VENV/bin/python" "$REPO/scripts/lib/bolt_ping.py"
}

# ---------------------------------------------------------------------------------------------
# graph server

graph_up() {
  ensure_venv
  local uri user pass
  uri=$(graph_uri); user=$(graph_user); pass=$(graph_password)
  if graph_is_external; then
    log "graph: using NEO4J_URI=$uri (not starting a local server)"
    bolt_ping "$uri" "$user" "$pass" >/dev/null || die "graph server at $uri does not answer RETURN 1 (check NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD)"
    return
  fi
  [ ${#pass} -ge 8 ] || die "NEO4J_PASSWORD must have at least 8 characters for the local ArcadeDB server"
  local dir=$STATE_DIR/arcadedb pidf=$STATE_DIR/arcadedb/pid
  mkdir -p "$dir"
  local pid; pid=$(read_pid "$pidf")
  if pid_alive "$pid"; then
    if bolt_ping "$uri" "$user" "$pass" >/dev/null 2>&1; then
      log "graph: ArcadeDB already running (pid $pid) at $uri"
      return
    fi
    log "graph: pid $pid is alive but does not answer; restarting it"
    stop_pid "$pidf" arcadedb
  fi
  if port_open 127.0.0.1 "$BOLT_PORT"; then
    # Not ours (e.g. started from another checkout): reuse it only if it answers with our
    # credentials, like a NATS already running is reused. Tests isolate themselves by label.
    if bolt_ping "$uri" "$user" "$pass" >/dev/null 2>&1; then
      log "graph: reusing the Bolt server already answering at $uri (not started by this checkout; \`down\` leaves it alone)"
      return
    fi
    die "port $BOLT_PORT is taken by a process we did not start; set WEIR_BOLT_PORT or NEO4J_URI"
  fi
  if port_open 127.0.0.1 "$ARCADE_HTTP_PORT"; then
    die "port $ARCADE_HTTP_PORT is taken by a process we did not start; set WEIR_ARCADEDB_HTTP_PORT"
  fi
  # A fresh data directory per run: cheaper than deleting a big graph.
  rm -rf "$dir"/data-*
  local data; data=$dir/data-$(date +%s)
  mkdir -p "$data"
  local home; home=$(arcade_home)
  log "graph: starting ArcadeDB (Bolt 127.0.0.1:$BOLT_PORT, HTTP 127.0.0.1:$ARCADE_HTTP_PORT, data $data, log $dir/server.log)"
  (
    cd "$dir"
    # setsid: the server must not die with the shell that started it (or with CI's step).
    setsid nohup "$home/jre/bin/java" -Xms256m "-Xmx$ARCADE_HEAP" --add-modules jdk.incubator.vector \
      "-Darcadedb.server.rootPath=$data" \
      "-Darcadedb.server.rootPassword=$pass" \
      "-Darcadedb.server.defaultDatabases=neo4j[root]" \
      -Darcadedb.server.httpIncomingHost=127.0.0.1 "-Darcadedb.server.httpIncomingPort=$ARCADE_HTTP_PORT" \
      -Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin \
      -Darcadedb.bolt.host=127.0.0.1 "-Darcadedb.bolt.port=$BOLT_PORT" \
      -cp "$home/jars/*" com.arcadedb.server.ArcadeDBServer \
      >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$pidf"
  )
  pid=$(read_pid "$pidf")
  local i
  for i in $(seq 1 120); do
    if ! pid_alive "$pid"; then
      tail -n 30 "$dir/server.log" >&2 || true
      die "graph: ArcadeDB exited during start (log above, full log $dir/server.log)"
    fi
    if bolt_ping "$uri" "$user" "$pass" >/dev/null 2>&1; then
      log "graph: ready after ${i}s: $(bolt_ping "$uri" "$user" "$pass")"
      return
    fi
    sleep 1
  done
  tail -n 30 "$dir/server.log" >&2 || true
  die "graph: ArcadeDB did not answer RETURN 1 within 120 s (log $dir/server.log)"
}

# ---------------------------------------------------------------------------------------------
# NATS

nats_info_has_jetstream() { # host port
  local info
  info=$(timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2; head -n 1 <&3" 2>/dev/null || true)
  case "$info" in
    INFO*'"jetstream":true'*) return 0 ;;
    *) return 1 ;;
  esac
}

RESOLVED_NATS_URL=
nats_up() {
  local dir=$STATE_DIR/nats pidf=$STATE_DIR/nats/pid hp host port
  mkdir -p "$dir"
  if [ -n "${NATS_URL:-}" ]; then
    hp=$(url_hostport "$NATS_URL"); host=${hp%:*}; port=${hp##*:}
    nats_info_has_jetstream "$host" "$port" || die "NATS at $NATS_URL is not reachable or has no JetStream (start it with -js)"
    log "nats: using NATS_URL=$NATS_URL"
    RESOLVED_NATS_URL=$NATS_URL
    return
  fi
  local pid; pid=$(read_pid "$pidf")
  if pid_alive "$pid" && nats_info_has_jetstream 127.0.0.1 "$NATS_PORT"; then
    log "nats: our nats-server already running (pid $pid) at nats://127.0.0.1:$NATS_PORT"
    RESOLVED_NATS_URL=nats://127.0.0.1:$NATS_PORT
    return
  fi
  if [ "${WEIR_NATS_REUSE:-1}" = 1 ] && nats_info_has_jetstream 127.0.0.1 4222; then
    log "nats: reusing the NATS with JetStream already listening at nats://127.0.0.1:4222"
    RESOLVED_NATS_URL=nats://127.0.0.1:4222
    return
  fi
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  local bin; bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if port_open 127.0.0.1 "$NATS_PORT"; then
    die "port $NATS_PORT is taken by a process we did not start; set WEIR_NATS_PORT or NATS_URL"
  fi
  rm -rf "$dir/data"; mkdir -p "$dir/data"
  log "nats: starting nats-server with JetStream on 127.0.0.1:$NATS_PORT (data $dir/data, log $dir/server.log)"
  setsid nohup "$bin" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$dir/data" -l "$dir/server.log" </dev/null >/dev/null 2>&1 &
  echo $! >"$pidf"
  pid=$(read_pid "$pidf")
  local i
  for i in $(seq 1 100); do
    if nats_info_has_jetstream 127.0.0.1 "$NATS_PORT"; then
      RESOLVED_NATS_URL=nats://127.0.0.1:$NATS_PORT
      log "nats: ready"
      return
    fi
    pid_alive "$pid" || { tail -n 20 "$dir/server.log" >&2 || true; die "nats-server exited during start"; }
    sleep 0.1
  done
  die "nats-server did not come up within 10 s (log $dir/server.log)"
}

# ---------------------------------------------------------------------------------------------
# Kafka (tansu, a Kafka-protocol broker; memory store: it forgets everything when stopped)

# Builds tansu into the cache once (cargo install --root; the dynostore feature carries the
# memory storage engine). Installed to a temporary root first, so a cut-short build is redone.
ensure_tansu() {
  if [ -x "$TANSU_BIN" ]; then return; fi
  command -v cargo >/dev/null || die "cargo not found: needed to build the tansu Kafka broker"
  rm -rf "$TANSU_DIR.partial"
  mkdir -p "$CACHE_DIR"
  log "kafka: building tansu $TANSU_VERSION into $TANSU_DIR (cargo install, once; about 8 min on 2 cores)"
  CARGO_TARGET_DIR=$CACHE_DIR/tansu-build cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore --root "$TANSU_DIR.partial" >&2
  rm -rf "$CACHE_DIR/tansu-build" "$TANSU_DIR"
  mv "$TANSU_DIR.partial" "$TANSU_DIR"
}

RESOLVED_KAFKA_BROKERS=
kafka_up() {
  local dir=$STATE_DIR/kafka pidf=$STATE_DIR/kafka/pid
  mkdir -p "$dir"
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    local hp=${KAFKA_BROKERS%%,*}
    port_open "${hp%:*}" "${hp##*:}" || die "Kafka at $KAFKA_BROKERS is not reachable"
    log "kafka: using KAFKA_BROKERS=$KAFKA_BROKERS"
    RESOLVED_KAFKA_BROKERS=$KAFKA_BROKERS
    return
  fi
  local pid; pid=$(read_pid "$pidf")
  if pid_alive "$pid" && port_open 127.0.0.1 "$KAFKA_PORT"; then
    log "kafka: our tansu broker already running (pid $pid) at 127.0.0.1:$KAFKA_PORT"
    RESOLVED_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
    return
  fi
  if port_open 127.0.0.1 "$KAFKA_PORT"; then
    # Not ours (e.g. started from another checkout): reused, like a graph server or NATS.
    log "kafka: reusing what listens at 127.0.0.1:$KAFKA_PORT (not started by this checkout; \`down\` leaves it alone)"
    RESOLVED_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
    return
  fi
  ensure_tansu
  log "kafka: starting tansu on 127.0.0.1:$KAFKA_PORT (memory store, log $dir/server.log)"
  setsid nohup "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
    </dev/null >"$dir/server.log" 2>&1 &
  echo $! >"$pidf"
  pid=$(read_pid "$pidf")
  local i
  for i in $(seq 1 100); do
    if port_open 127.0.0.1 "$KAFKA_PORT"; then
      RESOLVED_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
      log "kafka: ready"
      return
    fi
    pid_alive "$pid" || { tail -n 20 "$dir/server.log" >&2 || true; die "tansu exited during start"; }
    sleep 0.1
  done
  die "tansu did not listen within 10 s (log $dir/server.log)"
}

# ---------------------------------------------------------------------------------------------
# commands

write_env() {
  mkdir -p "$STATE_DIR"
  umask 077
  cat >"$STATE_DIR/env" <<EOF
# Written by scripts/dev.sh up; read by Weir's binaries and tests (environment variables win).
NEO4J_URI=$(graph_uri)
NEO4J_USER=$(graph_user)
NEO4J_PASSWORD=$(graph_password)
NATS_URL=$RESOLVED_NATS_URL
KAFKA_BROKERS=$RESOLVED_KAFKA_BROKERS
WEIR_TANSU_BIN=$TANSU_BIN
EOF
}

print_env() {
  printf 'NEO4J_URI=%s\nNEO4J_USER=%s\nNEO4J_PASSWORD=***\nNATS_URL=%s\nKAFKA_BROKERS=%s\n' \
    "$(graph_uri)" "$(graph_user)" "$RESOLVED_NATS_URL" "$RESOLVED_KAFKA_BROKERS"
}

cmd_up() {
  graph_up
  nats_up
  kafka_up
  write_env
  log "settings (also in $STATE_DIR/env):"
  print_env | sed 's/^/    /' >&2
}

stop_pid() { # pidfile name
  local pidf=$1 name=$2 pid
  pid=$(read_pid "$pidf")
  if pid_alive "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
      log "$name did not stop within 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidf"
}

cmd_down() {
  stop_pid "$STATE_DIR/arcadedb/pid" arcadedb
  stop_pid "$STATE_DIR/nats/pid" nats-server
  stop_pid "$STATE_DIR/kafka/pid" tansu
  rm -rf "$STATE_DIR"/arcadedb/data-* "$STATE_DIR/nats/data" "$STATE_DIR/env"
  log "down: nothing of ours is running"
}

cmd_status() {
  local pid
  pid=$(read_pid "$STATE_DIR/arcadedb/pid")
  if graph_is_external; then echo "graph:  external at $(graph_uri)"
  elif pid_alive "$pid"; then echo "graph:  ArcadeDB running, pid $pid, bolt://127.0.0.1:$BOLT_PORT, http 127.0.0.1:$ARCADE_HTTP_PORT, log $STATE_DIR/arcadedb/server.log"
  elif port_open 127.0.0.1 "$BOLT_PORT"; then echo "graph:  not ours; something listens on bolt://127.0.0.1:$BOLT_PORT (reused if it accepts our credentials)"
  else echo "graph:  not running"; fi
  pid=$(read_pid "$STATE_DIR/nats/pid")
  if [ -n "${NATS_URL:-}" ]; then echo "nats:   external at $NATS_URL"
  elif pid_alive "$pid"; then echo "nats:   nats-server running, pid $pid, nats://127.0.0.1:$NATS_PORT, log $STATE_DIR/nats/server.log"
  elif nats_info_has_jetstream 127.0.0.1 4222; then echo "nats:   not ours; reusing nats://127.0.0.1:4222 (JetStream)"
  else echo "nats:   not running"; fi
  pid=$(read_pid "$STATE_DIR/kafka/pid")
  if [ -n "${KAFKA_BROKERS:-}" ]; then echo "kafka:  external at $KAFKA_BROKERS"
  elif pid_alive "$pid"; then echo "kafka:  tansu running, pid $pid, 127.0.0.1:$KAFKA_PORT, log $STATE_DIR/kafka/server.log"
  else echo "kafka:  not running"; fi
  if [ -f "$STATE_DIR/env" ]; then echo "settings: $STATE_DIR/env"; fi
}

load_env() { # exports the settings `up` wrote
  set -a
  # shellcheck disable=SC1091
  . "$STATE_DIR/env"
  set +a
}

ensure_rust_tools() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

# Free space on the target directory's disk, in MiB, and the target directory's size: printed
# after each build step so a CI log shows where the disk went.
disk_report() {
  local target=${CARGO_TARGET_DIR:-$REPO/target} free used
  free=$(df -Pm "$REPO" 2>/dev/null | awk 'NR==2 {print $4}' || true)
  used=$( (du -sm "$target" 2>/dev/null || true) | awk '{print $1}')
  log "disk: ${free:-?} MiB free, target dir ${used:-0} MiB ($1)"
}

CONSOLE_DIR=$REPO/crates/weir-console

# Node.js with npm, at least version $1 (major.minor): playwright-core needs 20, vite 20.19.
# Debian 12's own nodejs is 18: then this says what to install instead of failing later.
ensure_node() {
  local want=$1 have
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  have=$(node -p 'process.versions.node')
  if ! node -e 'const [a, b] = process.argv.slice(1).map((v) => v.split(".").map(Number));
      process.exit(a[0] > b[0] || (a[0] === b[0] && a[1] >= b[1]) ? 0 : 1)' "$have" "$want"; then
    die "the web console needs Node.js $want or newer (found $have): install one (Debian 13's nodejs, NodeSource's or nvm's) and run again"
  fi
}

# The console's npm packages, exactly as the lockfile pins them (playwright-core for the
# browser test; vite and the page's libraries for console-build). $1: the Node.js needed.
console_npm_ci() {
  ensure_node "$1"
  log "npm ci (crates/weir-console)"
  (cd "$CONSOLE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
}

# Rebuilds crates/weir-console/assets/ (committed; `cargo build` embeds them and needs no npm).
# A unit test of weir-console fails while the assets do not match the sources.
cmd_console_build() {
  console_npm_ci 20.19
  log "npm run build (crates/weir-console: vite, then assets/manifest.json)"
  (cd "$CONSOLE_DIR" && npm run build)
}

# The console and GraphiQL in Debian's chromium against a real `weir serve` and the real graph
# server: the page's requests, an upload through the page, the memory chart, GraphiQL's query
# and subscription, a wrong key. Screenshots and the server log go to target/console-artifacts/.
console_e2e() {
  if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
  console_npm_ci 20.0
  log "cargo build -p weir-cli (the binary the browser test starts)"
  cargo build --locked -p weir-cli
  local target=${CARGO_TARGET_DIR:-$REPO/target}
  log "browser test: node --test crates/weir-console/e2e/"
  WEIR_BIN=$target/debug/weir CHROMIUM=/usr/bin/chromium CONSOLE_ARTIFACTS=$target/console-artifacts \
    node --test --test-concurrency=1 "$CONSOLE_DIR/e2e/"
}

cmd_test() {
  ensure_rust_tools
  # Incremental caches only help rebuilds during development; in a one-shot test run they
  # double the space the workspace's own crates take.
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
  cmd_up
  load_env
  cd "$REPO"
  disk_report "start"
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  disk_report "after clippy"
  log "scripts/dev.sh self-test (up twice, status, down leaves nothing behind)"
  bash "$REPO/scripts/lib/selftest.sh"
  log "cargo test --doc"
  cargo test --workspace --doc --locked
  disk_report "after doctests"
  log "promtool (for the Prometheus format and alert-rule tests)"
  bash "$REPO/scripts/lib/ensure-promtool.sh" >/dev/null
  log "cargo nextest"
  cargo nextest run --workspace --locked --profile ci
  disk_report "after nextest"
  console_e2e
}

cmd_demo() {
  ensure_rust_tools
  cmd_up
  load_env
  cd "$REPO"
  log "building weir (release)"
  cargo build --release --locked -p weir-cli
  local weir=$REPO/target/release/weir
  "$weir" ping
  # The main job: check the example mapping, ingest the example dataset, then a larger
  # generated one (same shape) with the live progress bar (plain lines when not a terminal).
  local demo_dir=$STATE_DIR/demo
  mkdir -p "$demo_dir"
  log "weir validate examples/people/mapping.toml"
  "$weir" validate --mapping examples/people/mapping.toml
  log "weir ingest examples/people/people.csv (1000 people)"
  "$weir" ingest examples/people/people.csv --mapping examples/people/mapping.toml \
    --checkpoint "$demo_dir/example.checkpoint.json" --dead-letter "$demo_dir/example.dead.jsonl"
  log "weir generate --people ${WEIR_DEMO_PEOPLE:-50000} | weir ingest (progress bar)"
  "$weir" generate --people "${WEIR_DEMO_PEOPLE:-50000}" --out "$demo_dir/people.csv"
  "$weir" ingest "$demo_dir/people.csv" --mapping examples/people/mapping.toml \
    --dead-letter "$demo_dir/people.dead.jsonl"
  # Serve the gateway (GraphQL + subscriptions + ingest job API) over the same graph.
  local key=${WEIR_DEMO_API_KEY:-demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
  local bind=${WEIR_DEMO_BIND:-127.0.0.1:8080} admin=${WEIR_DEMO_ADMIN_BIND:-127.0.0.1:9464}
  cat >&2 <<EOF
[dev] serving the gateway; where to look:
    console      http://$bind/#key=$key
                 (the key goes to this tab's sessionStorage and leaves the address bar; or open
                 http://$bind/ and paste it)   GraphiQL: http://$bind/graphiql
    GraphQL      http://$bind/graphql   (WebSocket ws://$bind/graphql/ws)
    API key      $key   (header "Authorization: Bearer $key", or {"authorization": "Bearer $key"} in connection_init)
    try          curl -s -H "Authorization: Bearer $key" -H 'content-type: application/json' \\
                   -d '{"query":"{ counts(labels: [\\"Person\\", \\"Company\\"]) { label count } }"}' http://$bind/graphql
    health       http://$bind/health   http://$bind/ready
    metrics      http://$admin/metrics   http://$admin/api/memory/report
    jobs         POST http://$bind/jobs   GET http://$bind/jobs
    stop         Ctrl-C (then ./scripts/dev.sh down stops the graph server and NATS)
EOF
  local serve=("$weir" serve --bind "$bind" --admin-bind "$admin" --api-key "$key")
  if [ -n "${WEIR_DEMO_SERVE_SECS:-}" ]; then
    # For scripted runs: serve for a while, then stop gracefully (SIGINT).
    timeout --signal=INT --preserve-status "$WEIR_DEMO_SERVE_SECS" "${serve[@]}"
  else
    "${serve[@]}"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) [ -f "$STATE_DIR/env" ] && { load_env; RESOLVED_NATS_URL=$NATS_URL; RESOLVED_KAFKA_BROKERS=${KAFKA_BROKERS:-}; print_env; } || die "not up" ;;
  test) cmd_test ;;
  demo) cmd_demo ;;
  console-build) cmd_console_build ;;
  console-e2e) cmd_up; load_env; cd "$REPO"; console_e2e ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
