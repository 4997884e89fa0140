//! The secret nodes of one cluster share, as RabbitMQ's Erlang cookie: by default
//! `~/.hare.cluster-secret`, made by the first node that starts (random, mode 0600), so that
//! nodes of one user on one host need no set-up; `--cluster-secret-file` names another (the
//! same content on every host of a cluster).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default secret file: in the user's home directory.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".hare.cluster-secret")
}

/// Reads the secret at `path`, creating it with 32 random bytes (hex) if it does not exist.
/// A secret file others can read is refused, as Erlang refuses a readable cookie.
pub fn load_or_create(path: &Path) -> Result<Vec<u8>, String> {
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        // create_new: of nodes starting together, one writes and the others read it.
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut f) => {
                f.write_all(hex.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create the cluster secret {}: {e}", path.display())),
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("the cluster secret {} must be accessible by its owner only (mode 0600)", path.display()));
    }
    // A file written by another node moments ago may still be empty: read until it is not.
    for _ in 0..50 {
        let s = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let trimmed: Vec<u8> = s.trim_ascii().to_vec();
        if !trimmed.is_empty() {
            return Ok(trimmed);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("the cluster secret {} is empty", path.display()))
}
