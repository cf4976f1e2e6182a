#!/usr/bin/env bash
# The judge demo: `sbx judge` on every solution of examples/sum, one verdict table each.
# Exits non-zero only if the correct solutions do not pass.
set -u
here=$(cd "$(dirname "$0")" && pwd)
sbx=${SBX:-sbx}
status=0
for solution in "$here"/sum/solutions/*; do
    name=$(basename "$solution")
    echo "== $name"
    "$sbx" judge "$solution" --tests "$here/sum/tests" --time 1 --memory 64M 2>/dev/null
    verdict=$?
    case "$name" in ok.*) [ "$verdict" = 0 ] || status=1 ;; esac
done
exit "$status"
