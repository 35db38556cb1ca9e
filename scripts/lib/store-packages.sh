# shellcheck shell=bash
# Sourced by install-test-deps.sh (the S3 tests) and install-bench-deps.sh (section 9 of the
# bench): the Debian packages the real object stores of scripts/stores/ run on.
# shellcheck disable=SC2034  # used by the scripts that source this file
STORE_PACKAGES=(
    swift swift-proxy swift-account swift-container swift-object  # scripts/stores/swift:
    python3-swiftclient memcached  #   OpenStack Swift with s3api, the default S3 test store
    xfsprogs                       #   mkfs.xfs, for a DIR on XFS if the host fs lacks xattrs
    ceph-mon ceph-osd radosgw ceph-common  # scripts/stores/ceph: radosgw, strict S3
)
