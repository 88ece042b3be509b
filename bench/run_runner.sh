#!/usr/bin/env bash
# bench/run_runner.sh [PLAN...]
#
# The sandboxed migration runner against the runner it replaced, side by side on the
# fleet-migrate harness's private cluster (127.0.0.1:55432) and workload (3 revisions,
# 31 DDL statements per tenant). Each plan item is CASE:N:K; run them interleaved.
#
# Cases (CODE_product / CODE_generic, CODE = before | after):
#   before  the runner before the sandbox (git $BEFORE_REF, checked out in $BEFORE_DIR):
#           multiprocessing fork pool, in-process at K=1
#   after   this checkout: a sandbox child per tenant (product) or per lane (generic)
#   *_product  tenantctl migrate --product ledger: N tenants 0001..N in SCHEMA mode, each
#              its own role ledger_NNNN owning tenant_NNNN in database "ledger", each
#              migrated as that role, credentials from a connections file (0600)
#   *_generic  tenantctl migrate --schemas-like 'tenant_%' --dsn ... (run_tool.sh)
#   floor2     the harness's 2-session psql floor
#   dj_mp      django-tenants' multiprocessing executor (the harness's run_peer.sh)
#   noop_product  after_product run once untimed, then timed again: every tenant at head
#   noop_online   the same with --no-bulk-read: each tenant asked on its own connection
#   once_product / once_generic  after_*, on a copy of the workload whose 3 revisions
#              declare render_once = True (the same SQL): rendered once, applied as text
# Every tenantctl case also records the peak RSS of its main process (/usr/bin/time).
# Untimed: fresh database, N schemas (and roles), CHECKPOINT. Timed: one tenantctl
# process, start-up included. Checked: every schema at 0003 with the 6 tables.
# Output: lines "utc case N K seconds rss_kb" appended to $RAW (bench/results/runner.tsv).
# Prerequisites: (cd $HARNESS && ./pg_cluster.sh start)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${HARNESS:-/work/shared/bench/fleet-migrate}
RAW=${BENCH_RAW:-$HERE/results/runner.tsv}
BEFORE_REF=${BEFORE_REF:-e40fe99}
BEFORE_DIR=${BEFORE_DIR:-/tmp/tenantctl-before}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORK=${WORK:-/tmp/bench-runner}
source "$HARNESS/common.sh"
mkdir -p "$(dirname "$RAW")" "$WORK"

[[ -d $BEFORE_DIR ]] || git -C "$REPO" worktree add -f "$BEFORE_DIR" "$BEFORE_REF" -q

# Both runners start the same way: this venv's python, the code of one checkout first on
# sys.path (the venv's editable finder is dropped, or it would always pick this repo).
boot() {  # boot CHECKOUT -> python -c program running `tenantctl` from CHECKOUT
    printf '%s' "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; sys.path.insert(0, '$1'); from tenant_infra.cli import main; main()"
}
checkout() { [[ $1 == before ]] && echo "$BEFORE_DIR" || echo "$REPO"; }

documents() {  # documents N FILE: connections documents for tenants 0001..N (mode 0600)
    "$PYTHON" - "$1" "$2" <<'PY'
import json, os, sys
n, path = int(sys.argv[1]), sys.argv[2]
docs = []
for i in range(1, n + 1):
    t = f"{i:04d}"
    docs.append({
        "tenant": t, "product": "ledger", "isolation": "SCHEMA",
        "postgresql": {"host": "127.0.0.1", "port": 55432, "database": "ledger",
                       "schema": f"tenant_{t}", "user": f"ledger_{t}",
                       "password": f"bench-{t}", "sslmode": "disable"},
        "rabbitmq": {"host": "127.0.0.1", "port": 5672, "vhost": t, "user": f"ledger_{t}",
                     "password": f"bench-{t}"},
    })
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(docs, f)
PY
}

product_setup() {  # product_setup N: database ledger, roles ledger_NNNN owning tenant_NNNN
    local n=$1 i t
    fresh_db ledger
    {
        echo "BEGIN;"
        for ((i = 1; i <= n; i++)); do
            t=$(printf '%04d' "$i")
            echo "DO \$\$BEGIN CREATE ROLE ledger_$t LOGIN PASSWORD 'bench-$t';"
            echo "EXCEPTION WHEN duplicate_object THEN NULL; END\$\$;"
        done
        echo "COMMIT;"
    } | "${PSQL[@]}" -d postgres >/dev/null
    {
        echo "BEGIN;"
        for ((i = 1; i <= n; i++)); do
            t=$(printf '%04d' "$i")
            echo "CREATE SCHEMA tenant_$t AUTHORIZATION ledger_$t;"
        done
        echo "COMMIT;"
    } | "${PSQL[@]}" -d ledger >/dev/null
    settle ledger
}

migrate_product() {  # migrate_product CODE N K LOG: one tenantctl --product run (peak RSS in LOG.rss)
    local code=$1 n=$2 k=$3 log=$4 docs=$WORK/documents-$2.json
    [[ -f $docs ]] || documents "$n" "$docs"
    TENANT_INFRA_ADMIN_DSN="postgresql://postgres@127.0.0.1:55432/postgres" \
        /usr/bin/time -f '%M' -o "$log.rss" \
        "$PYTHON" -c "$(boot "$(checkout "$code")")" migrate --product ledger \
        --script-location "${SCRIPT:-$HARNESS/workload/alembic}" --connections "$docs" \
        --concurrency "$k" --format json ${EXTRA_ARGS:-} >"$log" 2>"$log.err" \
        || { tail -5 "$log.err" >&2; die "$code product run failed (log: $log)"; }
}

run_product() {  # run_product CODE N K [noop] -> seconds
    local code=$1 n=$2 k=$3 log=$WORK/$1_product_$2_$3${4:+_noop}.log t0 t1
    product_setup "$n"
    [[ -z ${4:-} ]] || migrate_product "$code" "$n" "$k" "$log.first"
    t0=$(now)
    migrate_product "$code" "$n" "$k" "$log"
    t1=$(now)
    verify_result ledger "$n" 2>/dev/null
    verify_alembic_versions ledger "$n" 2>/dev/null
    secs "$t0" "$t1"
}

run_generic() {  # run_generic CODE N K -> seconds
    local code=$1 n=$2 k=$3
    TOOL_LOG=$WORK/$1_generic_$2_$3.log \
    TOOL_CMD="$PYTHON -c \"$(boot "$(checkout "$code")")\" migrate --script-location ${SCRIPT:-{script\}} --dsn {dsn} --schemas-like '{like}' --concurrency {k}" \
        "$HARNESS/run_tool.sh" "$n" "$k" 2>"$WORK/$1_generic_$2_$3.err" | grep '^tool_seconds=' | cut -d= -f2
}

# The harness's workload, each revision declaring render_once (README: Rendered once).
ONCE=$WORK/workload-once
rm -rf "$ONCE" && cp -r "$HARNESS/workload/alembic" "$ONCE"
for f in "$ONCE"/versions/*.py; do printf '\nrender_once = True\n' >>"$f"; done

PLAN=("$@")
if [[ ${#PLAN[@]} == 0 ]]; then
    for _ in 1 2 3; do
        PLAN+=(before_product:1000:2 after_product:1000:2 before_generic:1000:2
               after_generic:1000:2 floor2:1000:2)
    done
fi
for item in "${PLAN[@]}"; do
    IFS=: read -r case_ n k <<<"$item"
    case $case_ in
        before_product|after_product)
            run_product "${case_%_product}" "$n" "$k" >"$WORK/secs"; secs=$(<"$WORK/secs")
            rss=$(tail -1 "$WORK/${case_%_product}_product_${n}_${k}.log.rss") ;;
        noop_product)
            run_product after "$n" "$k" noop >"$WORK/secs"; secs=$(<"$WORK/secs")
            rss=$(tail -1 "$WORK/after_product_${n}_${k}_noop.log.rss") ;;
        noop_online)  # the same, each tenant asked on its own connection (no bulk read)
            EXTRA_ARGS=--no-bulk-read run_product after "$n" "$k" noop >"$WORK/secs"
            secs=$(<"$WORK/secs"); rss=$(tail -1 "$WORK/after_product_${n}_${k}_noop.log.rss") ;;
        before_generic|after_generic)
            secs=$(run_generic "${case_%_generic}" "$n" "$k"); rss=- ;;
        floor2)
            secs=$("$HARNESS/run_floor.sh" "$n" 2 2>/dev/null | grep '^floor_seconds=' | cut -d= -f2)
            rss=- ;;
        dj_mp)
            secs=$("$HARNESS/run_peer.sh" "$n" multiprocessing 2>/dev/null | grep '^peer_seconds=' | cut -d= -f2)
            rss=- ;;
        once_product)
            SCRIPT=$ONCE run_product after "$n" "$k" >"$WORK/secs"; secs=$(<"$WORK/secs")
            rss=$(tail -1 "$WORK/after_product_${n}_${k}.log.rss") ;;
        once_generic)
            secs=$(SCRIPT=$ONCE run_generic after "$n" "$k"); rss=- ;;
        *) die "unknown case $case_" ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$case_" "$n" "$k" "$secs" "$rss" | tee -a "$RAW"
done
