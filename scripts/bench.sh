#!/usr/bin/env bash
# Weir's benchmarks in one command. Results: tables on stdout and in benches/results/*.md,
# RSS charts: the full preset's next to BENCHMARKS.md (BENCHMARKS-rss-*.png, which BENCHMARKS.md
# quotes), the quick preset's in benches/results/ (rss-*-quick.png).
#
#   scripts/bench.sh quick   ingest (100 k people, 3 runs, sweep), consume vs ingest (100 k people,
#                            3 runs), fan-out (1,000 clients, 3 runs, 1 and 2 replicas, churn),
#                            criterion micro-benches (short)
#   scripts/bench.sh full    ingest (1 M people → 1.02 M nodes, 2 M relationships, 3 runs), consume
#                            vs ingest (100 k people, 3 runs), fan-out (10,000 clients, 3 runs),
#                            criterion micro-benches (default times)
#
# Starts the local graph server and NATS first (scripts/dev.sh up); settings as in dev.sh.
# Run it on a quiet machine: every figure is a median of the runs it makes, and the comparisons
# (Weir vs a bare loop, vs bare deadpool, vs neo4rs's own Graph) are measured in the same run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
preset=${1:-}
case "$preset" in
  quick | full) ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
log() { printf '[bench] %s\n' "$*" >&2; }

./scripts/dev.sh up
log "building release binaries (weir, weir-gatewayd, bench binaries)"
cargo build --release --locked -p weir-cli -p weir-gatewayd -p weir-benches
# Many sockets for the fan-out load generator (it also raises its own soft limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "ingest: weir ingest vs a bare neo4rs loop ($preset)"
if [ "$preset" = quick ]; then
  target/release/weir-bench-ingest --preset quick
else
  # The bare loop's best concurrency comes from the quick preset's sweep (1 on ArcadeDB): a
  # search at 1 M rows would add four passes of ~10 min each.
  target/release/weir-bench-ingest --preset full --bare-concurrency 1
fi
log "consume: weir consume (JetStream, 1 and 2 workers) vs weir ingest of the same file"
target/release/weir-bench-consume --people 100000 --runs 3
log "fan-out: WebSocket subscriptions on weir-gatewayd over NATS ($preset)"
target/release/weir-bench-fanout --preset "$preset" --runs 3

if [ "$preset" = quick ]; then
  times=(-- --warm-up-time 1 --measurement-time 3)
else
  times=()
fi
for b in "weir-stream pipeline" "weir-pool pool" "weir-graph writer_vs_bare" "weir-bus bus" "weir-metrics scrape"; do
  set -- $b
  log "criterion: cargo bench -p $1 --bench $2"
  cargo bench --locked -p "$1" --bench "$2" "${times[@]}"
done
log "done: benches/results/ingest.md, benches/results/consume.md, benches/results/fanout.md, RSS charts ($preset), target/criterion/"
