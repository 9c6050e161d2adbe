#!/usr/bin/env bash
# idle-cpu.sh DEV_DIR SECONDS: CPU (cores) used by each stack process while idle.
dev=$1 secs=${2:-30}
declare -A pids
for f in "$dev"/pids/*.pid; do n=$(basename "$f" .pid); pids[$n]=$(cat "$f"); done
pg=$(sed -n 1p "$(cat "$dev/pg.location" 2>/dev/null || echo "$dev/pg")/postmaster.pid" 2>/dev/null)
[[ -n $pg ]] && pids[postgres]=$pg
ticks() { # pid and its children
  local p=$1 t=0 c
  for c in $p $(ps -o pid= --ppid "$p" 2>/dev/null); do
    t=$((t + $(awk '{print $14+$15}' /proc/$c/stat 2>/dev/null || echo 0)))
  done
  echo $t
}
declare -A before
for n in "${!pids[@]}"; do before[$n]=$(ticks "${pids[$n]}"); done
sleep "$secs"
hz=$(getconf CLK_TCK); total=0
for n in $(printf '%s\n' "${!pids[@]}" | sort); do
  d=$(( $(ticks "${pids[$n]}") - ${before[$n]} ))
  total=$((total + d))
  awk -v n="$n" -v d=$d -v hz=$hz -v s=$secs 'BEGIN {printf "%-16s %.3f cores\n", n, d/hz/s}'
done
awk -v d=$total -v hz=$hz -v s=$secs 'BEGIN {printf "%-16s %.3f cores\n", "TOTAL", d/hz/s}'
