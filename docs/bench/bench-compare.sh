#!/usr/bin/env bash
# docs/bench/bench-compare.sh DIR LABEL: a fresh release stack from the
# checkout DIR, its idle CPU (idle-cpu.sh), then 20 s at 200 and 400 msg/s
# and at the maximum rate, then 20 s of one group of 100 at 20 msg/s, each
# with the PostgreSQL rows written per message; results in
# /tmp/bench-LABEL-*. Run it for two
# checkouts one after the other to compare them (docs/bench/NOTES.md).
# LOADGEN: the load generator to use for both (default: DIR's release one).
set -uo pipefail
dir=$1 label=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$dir"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/messenger/target} MESSENGER_BUILD_PROFILE=release
export GATEWAY_RATE_LIMIT_PER_IP=1000000 GATEWAY_RATE_LIMIT_PER_ACCOUNT=1000000
lg=${LOADGEN:-$CARGO_TARGET_DIR/release/loadgen}
[[ -x $lg ]] || cargo build --release -p tests --bin loadgen
./dev down --purge >/dev/null 2>&1
./dev up >"/tmp/bench-$label-up.log" 2>&1 || { tail -20 "/tmp/bench-$label-up.log"; exit 1; }
sleep 5
"$here/idle-cpu.sh" .dev 20 >"/tmp/bench-$label-idle.txt"
common=(--url https://localhost:8443 --ca .dev/pki/ca.pem --dev-dir .dev --users 100
  --groups 10 --group-size 10 --duration 20 --drain 60 --reconnect)
# Rows written in the messenger database (inserted, updated, deleted), from
# PostgreSQL's statistics, as `./dev bench` counts them.
pgdir=$(cat .dev/pg.location 2>/dev/null || echo "$PWD/.dev/pg")
rows_written() {
  (cd / && runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -q -tA \
    -h "$(sed -n 5p "$pgdir/postmaster.pid")" -p "$(sed -n 4p "$pgdir/postmaster.pid")" -d messenger \
    -c 'SELECT pg_stat_force_next_flush()' \
    -c 'SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables') | tail -1
}
# run NAME ARGS...: one load-generator run; appends rows per message sent,
# counted from the moment every socket is ready to the end of the drain.
run() {
  local name=$1 before after sent
  shift
  rm -f "/tmp/bench-$label-$name.ready"
  "$lg" "$@" --json "/tmp/bench-$label-$name.json" --ready-file "/tmp/bench-$label-$name.ready" \
    >"/tmp/bench-$label-$name.md" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null && [[ ! -f /tmp/bench-$label-$name.ready ]]; do sleep 0.1; done
  before=$(rows_written)
  wait "$pid"
  after=$(rows_written)
  sent=$(sed -n 's/.*"sent": *\([0-9]*\).*/\1/p' "/tmp/bench-$label-$name.json" | head -1)
  echo "rows per message: $(awk -v r=$((after - before)) -v m="${sent:-0}" 'BEGIN {if (m > 0) printf "%.1f", r / m}') ($((after - before)) rows, ${sent:-0} messages)" \
    >>"/tmp/bench-$label-$name.md"
}
for r in 200 400; do
  run "$r" "${common[@]}" --rate "$r"
done
run max "${common[@]}" --rate 0 --window 8
run big --url https://localhost:8443 --ca .dev/pki/ca.pem --dev-dir .dev --users 100 \
  --groups 1 --group-size 100 --duration 20 --drain 60 --reconnect --rate 20
./dev down >/dev/null 2>&1
