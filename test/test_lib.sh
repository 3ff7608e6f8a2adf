# What the shell tests share; source it first thing: `source "$(dirname "$0")/test_lib.sh"`.
# It moves to the repository root, lets mpirun run as root with more ranks than cores, makes
# $TMP (removed at exit), and gives:
#   ok TEXT / bad TEXT [FILE]     count a check (bad prints FILE's last BAD_TAIL lines, default 12)
#   midstep_death_checks RUN...   for exit, error, kill: rank 1 of 3 dies at step 2 of a ring run
#                                 -> the job ends non-zero within 60 s, naming rank 1
#   finish                        "N passed, M failed (T s)", non-zero on any failure
set -u
cd "$(dirname "${BASH_SOURCE[1]}")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe"
PY=${MOSAIC_PYTHON:-/usr/bin/python3} # Debian's, with python3-torch; MOSAIC_PYTHON overrides (a GPU machine's own)
TMP=$(mktemp -d "/tmp/mosaic_$(basename "${BASH_SOURCE[1]}" .sh).XXXXXX")
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
t_start=$SECONDS

ok() { passed=$((passed + 1)); echo "ok    $1"; }
bad() {
    failed=$((failed + 1))
    echo "FAIL  $1"
    if [ -n "${2:-}" ]; then tail -n "${BAD_TAIL:-12}" "$2" 2>/dev/null | sed 's/^/      /'; fi
}

# midstep_death_checks BINARY FLAGS...: the flags must train long enough to reach step 2
midstep_death_checks() {
    local how start code
    for how in exit error kill; do
        start=$SECONDS
        timeout 60 $MPIRUN -np 3 "$@" --steps 1000 --sp 3 --row-attn ring --debug-fail-rank 1 --debug-fail-step 2 \
            --debug-fail-how "$how" >"$TMP/fail.out" 2>&1
        code=$?
        if [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && grep -q "rank 1" "$TMP/fail.out"; then
            ok "rank 1 dies mid-step ($how): job exits $code after $((SECONDS - start)) s, naming rank 1"
        else
            bad "rank 1 dies mid-step ($how): exit $code after $((SECONDS - start)) s" "$TMP/fail.out"
        fi
    done
}

finish() {
    echo "$passed passed, $failed failed ($((SECONDS - t_start)) s)"
    [ "$failed" -eq 0 ]
}
