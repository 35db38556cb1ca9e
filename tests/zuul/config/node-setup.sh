#!/usr/bin/env bash
# Makes this machine look like a fresh CI node, inside a private mount namespace
# (run as `unshare -m --propagation private node-setup.sh`), then execs sshd.
#
# What jobs write to the node stays in the run's scratch dir:
#   - overlays on /etc, /usr/local and /var/lib (registries.conf, daemon.json,
#     CA bundle, installed binaries, the node user itself, image stores);
#   - a fresh tmpfs on /run (sshd's privsep dir, /run/user/<uid> as logind
#     would make it, daemons' sockets) and a scratch dir on /home;
#   - cgroup v1 controllers on a tmpfs /sys/fs/cgroup, which dockerd needs.
#
# Environment: NODE_DIR (scratch dir of the node), NODE_USER, NODE_UID,
# NODE_PUBKEY (authorized key), NODE_HOSTS (lines added to /etc/hosts),
# NODE_CA (a CA certificate file the node trusts).
set -euxo pipefail

: "${NODE_DIR:?}" "${NODE_USER:?}" "${NODE_UID:?}" "${NODE_PUBKEY:?}"

overlay() {
    local target=$1 name=$2
    mkdir -p "$NODE_DIR/$name/upper" "$NODE_DIR/$name/work"
    mount -t overlay "speculum-e2e-$name" \
        -o "lowerdir=$target,upperdir=$NODE_DIR/$name/upper,workdir=$NODE_DIR/$name/work" "$target"
}

bind_scratch() {
    local target=$1 name=$2
    mkdir -p "$NODE_DIR/$name"
    mount --bind "$NODE_DIR/$name" "$target"
}

overlay /etc etc
overlay /usr/local usr-local
overlay /var/lib var-lib
mount -t tmpfs -o mode=0755 speculum-e2e-run /run
bind_scratch /home home

# cgroup v1 controllers for dockerd (runc wants devices, memory, pids, ...).
mount -t tmpfs -o mode=0755 speculum-e2e-cgroup /sys/fs/cgroup
for controller in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
done
mkdir -p /sys/fs/cgroup/systemd
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd

# The node user: non-root, passwordless sudo, key login only. '*' (not '!')
# keeps sshd from treating the account as locked.
useradd --uid "$NODE_UID" --user-group --create-home --home-dir "/home/$NODE_USER" \
    --shell /bin/bash "$NODE_USER"
usermod -p '*' "$NODE_USER"
echo "$NODE_USER ALL=(ALL) NOPASSWD: ALL" >"/etc/sudoers.d/$NODE_USER"
chmod 0440 "/etc/sudoers.d/$NODE_USER"
install -d -m 0700 -o "$NODE_USER" -g "$NODE_USER" "/home/$NODE_USER/.ssh"
install -m 0600 -o "$NODE_USER" -g "$NODE_USER" "$NODE_PUBKEY" "/home/$NODE_USER/.ssh/authorized_keys"

# What logind would do at login.
install -d -m 0700 -o "$NODE_USER" -g "$NODE_USER" "/run/user/$NODE_UID"
install -d -m 0755 /run/sshd /run/lock

if [[ -n ${NODE_HOSTS:-} ]]; then
    printf '%s\n' "$NODE_HOSTS" >>/etc/hosts
fi
if [[ -n ${NODE_CA:-} ]]; then
    cp "$NODE_CA" /usr/local/share/ca-certificates/speculum-e2e.crt
    update-ca-certificates >/dev/null
fi

exec /usr/sbin/sshd -D -e -f "$NODE_DIR/sshd_config"
