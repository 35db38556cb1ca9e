#!/bin/sh
# Runs the executor in a mount namespace of its own (`unshare -m --propagation
# private executor-ns.sh HOSTS CMD...`), where /etc/hosts also maps Docker Hub's
# names to the stand-in, as the node's does: jobs that run on the executor
# (promote) reach "docker.io" too. bubblewrap binds this /etc/hosts into jobs.
set -eu
hosts=$1
shift
mount --bind "$hosts" /etc/hosts
exec "$@"
