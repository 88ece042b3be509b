#!/usr/bin/env bash
# bench/run_tenantctl.sh [PLAN...]
#
# Measures `tenantctl migrate` (generic mode) side by side with the peers of the shared
# harness /work/shared/bench/fleet-migrate on identical work: N empty tenant_NNNN
# schemas brought to head (3 ledger revisions), one run at a time on the private PG15
# cluster (127.0.0.1:55432). Each plan item is CASE:N; default = the matrix below.
# Output: bench/results/raw.tsv (utc case N seconds peak_rss_kb) and the harness logs.
#
# Cases: floor1 floor2 dj_standard dj_mp naive tool1 tool2
#   toolK = run_tool.sh N K with TOOL_CMD = this repo's tenantctl migrate ... --concurrency K,
#           wrapped in /usr/bin/time -v for the peak RSS of the tool's main process
#           (workers are forked children; their peak is logged separately below).
# Prerequisites: (cd $HARNESS && ./setup_venv.sh && ./pg_cluster.sh start)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${HARNESS:-/work/shared/bench/fleet-migrate}
RAW=${BENCH_RAW:-$HERE/results/raw.tsv}
TENANTCTL=${TENANTCTL:-"$REPO/.venv/bin/tenantctl migrate"}
mkdir -p "$(dirname "$RAW")" "$HERE/results"
PLAN=("$@")
if [[ ${#PLAN[@]} == 0 ]]; then
    PLAN=(floor1:200 floor2:200 tool1:200 tool2:200 dj_standard:200 dj_mp:200 naive:200
          floor1:1000 floor2:1000 tool1:1000 tool2:1000 dj_standard:1000 dj_mp:1000)
fi

last() { grep -E "^$1=" | tail -1 | cut -d= -f2; }

for item in "${PLAN[@]}"; do
    case_=${item%%:*}; n=${item##*:}; rss=-
    log=$HERE/results/${case_}_${n}.log
    case $case_ in
        floor1) secs=$("$HARNESS/run_floor.sh" "$n" 1 2>"$log" | last floor_seconds) ;;
        floor2) secs=$("$HARNESS/run_floor.sh" "$n" 2 2>"$log" | last floor_seconds) ;;
        dj_standard) secs=$("$HARNESS/run_peer.sh" "$n" standard 2>"$log" | last peer_seconds) ;;
        dj_mp) secs=$("$HARNESS/run_peer.sh" "$n" multiprocessing 2>"$log" | last peer_seconds) ;;
        naive) secs=$("$HARNESS/run_alembic_loop.sh" "$n" 2>"$log" | last naive_seconds) ;;
        tool1|tool2)
            k=${case_#tool}; timefile=$HERE/results/${case_}_${n}.time
            export TOOL_LOG=$HERE/results/${case_}_${n}.tool.log
            export TOOL_CMD="/usr/bin/time -v -o $timefile $TENANTCTL --script-location {script} --dsn {dsn} --schemas-like '{like}' --concurrency {k}"
            secs=$("$HARNESS/run_tool.sh" "$n" "$k" 2>"$log" | last tool_seconds)
            rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$timefile")
            ;;
        *) echo "unknown case $case_" >&2; exit 2 ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$case_" "$n" "${secs:--}" "$rss" | tee -a "$RAW"
done
