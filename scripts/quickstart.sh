#!/usr/bin/env bash
# herd's quickstart: builds herd, starts `herd up` (a server on the embedded SQLite plus one
# local worker) in a temporary folder, queues a few tasks, waits for them, shows the results,
# and stops everything. Nothing is left running and nothing listens beyond loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; }

echo "building herd (first time: a few minutes)..." >&2
cargo build --locked -p herd-launch
herd=${CARGO_TARGET_DIR:-$PWD/target}/debug/herd

work=$(mktemp -d)
# `herd up` saves its admin token as this user's credentials for the server it starts; keep
# those of this throw-away server in the temporary folder, not in ~/.config/herd.
export HERD_CONFIG_DIR="$work/config"
trap 'kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; rm -rf "$work"' EXIT

"$herd" up --listen 127.0.0.1:0 --port-file "$work/address" --data-dir "$work/data" --concurrency 2 \
    2> "$work/up.log" &
up=$!
for _ in $(seq 300); do
    [[ -s $work/address ]] && break
    kill -0 "$up" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
    sleep 0.1
done
export HERD_SERVER="http://$(cat "$work/address")"
echo "herd up is serving on $HERD_SERVER (log: $work/up.log)" >&2

mkdir -p "$work/input" "$work/results"
printf 'ACGT\nTTGA\nCCAT\n' > "$work/input/reads.txt"

say herd launch -n hello -- echo 'hello from herd'
"$herd" launch -n hello -- echo 'hello from herd'
say herd launch -n count -i "$work/input/reads.txt" -o "$work/results/" -- sh -c 'wc -l < $INPUT/reads.txt > $OUTPUT/count.txt'
"$herd" launch -n count -i "$work/input/reads.txt" -o "$work/results/" -- sh -c 'wc -l < $INPUT/reads.txt > $OUTPUT/count.txt'
say 'herd launch --file -   # three command lines on stdin'
printf 'sh -c "echo sample %s; echo cpu=$CPU"\n' 1 2 3 | "$herd" launch --file -

say herd batch wait default
"$herd" batch wait default
say herd task list
"$herd" task list
say herd task show 2
"$herd" task show 2
say herd task logs 1
"$herd" task logs 1
say cat "$work/results/count.txt"
cat "$work/results/count.txt"
echo >&2
echo "quickstart done: every task ran through a real server and worker; see README.md for more." >&2
