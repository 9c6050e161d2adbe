#!/usr/bin/env bash
# docs/bench/bench-compare.sh DIR LABEL: a fresh release stack from the
# checkout DIR, its idle CPU (idle-cpu.sh), then 20 s at 200 and 400 msg/s
# and at the maximum rate; results in /tmp/bench-LABEL-*. Run it for two
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
for r in 200 400; do
  "$lg" "${common[@]}" --rate "$r" --json "/tmp/bench-$label-$r.json" >"/tmp/bench-$label-$r.md" 2>&1
done
"$lg" "${common[@]}" --rate 0 --window 8 --json "/tmp/bench-$label-max.json" >"/tmp/bench-$label-max.md" 2>&1
./dev down >/dev/null 2>&1
