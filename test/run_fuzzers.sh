#!/usr/bin/env bash
# Runs the libFuzzer targets (`make fuzz` builds them into build/fuzz_<target>) for FUZZ_SECONDS
# each (30) on top of the seed corpus in test/fuzz_corpus/<target>/, which is read, never grown:
# new corpus entries go to a temporary directory (kept with FUZZ_KEEP=1). A crash, a sanitizer
# report, a timeout or running out of memory fails the target; the input that did it is copied
# to build/fuzz_crashes/ and its path printed: fix the bug, then add the input to the corpus.
# Usage: bash test/run_fuzzers.sh [target...]   (default: every build/fuzz_* binary)
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for t in test/fuzz_*.cpp; do t=$(basename "$t" .cpp); targets+=("$t"); done
fi
work=$(mktemp -d /tmp/mosaic_fuzz.XXXXXX)
[ "${FUZZ_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
# the readers' failure paths longjmp out of half-built state: leaks there are expected
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
status=0
for t in "${targets[@]}"; do
    bin=build/$t
    seeds=test/fuzz_corpus/$t
    if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then echo "$t: missing $bin or $seeds (make fuzz)"; status=1; continue; fi
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    echo "$t: ${SECONDS_EACH} s on $(ls "$seeds" | wc -l) seeds"
    # -timeout: a single input taking over 10 s is a hang; -rss_limit_mb: a reader must not balloon
    TMPDIR="$work/$t" "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" "$seeds" > "$work/$t/log" 2>&1
    rc=$?
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done )" "$work/$t/log" | sed 's/^/    /'
    echo "    new corpus entries this run: $(ls "$work/$t/corpus" | wc -l) (not kept)"
    if [ $rc -ne 0 ] || [ -n "$(ls "$work/$t/artifacts")" ]; then
        status=1
        tail -n 40 "$work/$t/log" | sed 's/^/    /'
        mkdir -p build/fuzz_crashes
        for a in "$work/$t/artifacts"/*; do
            [ -e "$a" ] || continue
            cp "$a" "build/fuzz_crashes/${t}_$(basename "$a")"
            echo "$t: FAILED on build/fuzz_crashes/${t}_$(basename "$a") (fix, then add it to $seeds/)"
        done
        [ -n "$(ls "$work/$t/artifacts")" ] || echo "$t: FAILED (exit $rc)"
    fi
done
exit $status
