//! Tool checks, free ports, binaries of this workspace, certificates.

use std::env;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Where Debian's `busybox-static` installs the static busybox.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The Debian package that provides each tool the tests use.
fn debian_package(tool: &str) -> &str {
    match tool {
        "docker" | "dockerd" => "docker.io",
        "htpasswd" => "apache2-utils",
        "ip" => "iproute2",
        "busybox" => "busybox-static",
        "openssl" => "openssl",
        "haproxy" => "haproxy",
        "umoci" => "umoci",
        "docker-registry" => "docker-registry",
        "swift-proxy-server" => "swift-proxy",
        "swift-account-server" => "swift-account",
        "swift-container-server" => "swift-container",
        "swift-object-server" | "swift-object-replicator" => "swift-object",
        "radosgw" | "radosgw-admin" => "radosgw",
        "ceph" => "ceph-common",
        other => other,
    }
}

/// Finds `name` on `PATH` and returns its path. Panics, naming the Debian package to
/// install, when it is missing: a missing client is a test failure, never a silent skip.
pub fn require_tool(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    for dir in env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` is not installed: install the Debian package `{}` \
         (scripts/install-test-deps.sh installs everything the tests need)",
        debian_package(name)
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks that a statically linked busybox is at [`BUSYBOX_PATH`]; panics otherwise, naming
/// `busybox-static`. (A dynamically linked busybox cannot run inside an image without libc.)
pub fn require_busybox() {
    let data = std::fs::read(BUSYBOX_PATH).unwrap_or_else(|e| {
        panic!("{BUSYBOX_PATH} is missing ({e}): install the Debian package `busybox-static`")
    });
    assert!(
        !has_interpreter(&data),
        "{BUSYBOX_PATH} is dynamically linked: install the Debian package `busybox-static`"
    );
}

/// Whether an ELF file has a `PT_INTERP` program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    // 64-bit little-endian ELF only; anything else counts as "cannot tell" (false).
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38));
    (0..phnum as usize).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= elf.len() && u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of a binary of this workspace, built by cargo: `$SPECULUM_<NAME>_BIN` if set
/// (name upper-cased, `-` → `_`), else `<target>/debug/<name>` where `<target>` is
/// `$CARGO_TARGET_DIR` or the workspace's `target/`. Integration tests of the package that
/// owns the binary should pass `env!("CARGO_BIN_EXE_<name>")` instead. Panics, saying how to
/// build it, when it does not exist.
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!("SPECULUM_{}_BIN", name.to_uppercase().replace('-', "_"));
    let path = match env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => {
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("debug").join(name)
        }
    };
    assert!(
        is_executable(&path),
        "binary {} not found: run `cargo build --bin {name}` (or set {var})",
        path.display()
    );
    path
}

/// A self-signed certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed_cert() -> SelfSigned {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = std::panic::catch_unwind(|| require_tool("htpasswd-that-does-not-exist"));
        assert!(err.is_err());
        let msg = std::panic::catch_unwind(|| require_tool("dockerd-nope")).unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("dockerd-nope"), "{msg}");
    }

    #[test]
    fn shell_is_found() {
        assert!(require_tool("sh").ends_with("sh"));
    }
}
