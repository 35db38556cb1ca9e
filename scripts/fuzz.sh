#!/usr/bin/env bash
# Fuzzes the parsers a client can reach: runs each property-test target over
# and over, each run with a fresh random seed and FUZZ_CASES cases, until its
# time is up, and reports the cases run. A failure stops the script with
# proptest's minimal failing input; fix it and add that input as a unit test
# beside the parser (doc/reliability.md lists the targets and the findings).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET_FILTER]     (make fuzz)
#
# Property tests run on the stable toolchain; they are also part of
# `make test`, at proptest's default of 256 cases each.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
filter=${2:-}
cases=${FUZZ_CASES:-5000}

# crate, test binary (lib: the crate's unit tests), test name
targets=(
    "speculum-oci props repository_names_follow_the_spec"
    "speculum-oci props tags_follow_the_spec"
    "speculum-oci props digests_print_back_as_parsed"
    "speculum-oci props references_are_a_tag_or_a_digest"
    "speculum-oci props manifest_parse_never_panics_on_bytes"
    "speculum-oci props manifest_parse_never_panics_on_mutated_manifests"
    "speculum-client props image_references_normalise_once"
    "speculum-client props repositories_normalise_once"
    "speculum-server lib any_range_header_stays_inside_the_blob"
    "speculum-server lib any_content_range_parses_or_is_refused"
    "speculum-server props tokens_of_any_shape_are_refused_without_panic"
    "speculum-server props a_token_changed_anywhere_is_refused"
    "speculum-server props any_configuration_text_parses_or_fails_cleanly"
)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    read -r crate bin name <<<"$target"
    [[ -z $filter || $name == *"$filter"* ]] || continue
    if [[ $bin == lib ]]; then which=(--lib); else which=(--test "$bin"); fi
    cargo test -q -p "$crate" "${which[@]}" --no-run 2>"$log" || { cat "$log"; exit 1; }
    runs=0
    end=$((SECONDS + seconds))
    while ((SECONDS < end)); do
        if ! PROPTEST_CASES=$cases cargo test -q -p "$crate" "${which[@]}" -- "$name" >"$log" 2>&1; then
            echo "FAILED: $crate $name"
            grep -E 'minimal failing input|panicked|assert' "$log" || cat "$log"
            exit 1
        fi
        runs=$((runs + 1))
    done
    echo "$crate $name: $((runs * cases)) cases in ${seconds} s, no failure"
done
