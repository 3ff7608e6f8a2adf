# The runner both test scripts share (sourced by test/run_all.sh and test/run_cuda_kernels.sh):
# `run NAME COMMAND...` runs one test program with its output indented, counts it as passed or
# failed, and `run_summary` prints the closing "N passed, M failed" and returns non-zero on any
# failure. A skipped step is only printed, never counted.
passed=${passed:-0}
failed=${failed:-0}
failed_names=${failed_names:-}

run() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "=== $name"
    if "$@" 2>&1 | sed 's/^/    /'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        passed=$((passed + 1))
        echo "=== $name: PASS ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1))
        failed_names="$failed_names $name"
        echo "=== $name: FAIL ($((SECONDS - t0)) s)"
    fi
}

run_summary() {
    echo
    [ -n "$failed_names" ] && echo "failed:$failed_names"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
