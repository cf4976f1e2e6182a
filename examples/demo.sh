#!/usr/bin/env bash
# The judge demo: `sbx judge` on every solution of examples/sum (a correct one in each shipped language, and
# one for each way to fail), then a problem package with an output validator and an interactive one.
# Exits non-zero only if the correct solutions do not pass.
set -u
here=$(cd "$(dirname "$0")" && pwd)
sbx=${SBX:-sbx}
status=0
for solution in "$here"/sum/solutions/*; do
    name=$(basename "$solution")
    echo "== $name"
    "$sbx" judge "$solution" --tests "$here/sum/tests" --time 1 --memory 256M 2>/dev/null
    verdict=$?
    case "$name" in ok.*) [ "$verdict" = 0 ] || status=1 ;; esac
done
for problem in average guess; do
    for solution in "$here/problems/$problem/solutions"/*; do
        name=$(basename "$solution")
        echo "== $problem: $name"
        "$sbx" judge "$solution" --problem "$here/problems/$problem" 2>/dev/null
        verdict=$?
        case "$name" in ok.*) [ "$verdict" = 0 ] || status=1 ;; esac
    done
done
exit "$status"
