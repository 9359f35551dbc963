//! The files of a node directory besides the store: the key (mode 0600, refused when others
//! can read it) and the admin token (created on first use, mode 0600).

use std::path::Path;

use super::NodeError;
use crate::identity::{KeyError, Keypair};

/// File in the node directory holding the admin token (mode 0600).
pub const TOKEN_FILE: &str = "admin-token";

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.to_path_buf(), source }
}

/// Creates `path` (it must not exist) readable by this user only (mode 0600), writes `bytes`
/// and syncs it.
pub(super) fn create_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

pub(super) fn write_key(path: &Path, key: &Keypair) -> Result<(), NodeError> {
    create_private(path, key.to_file_text().as_bytes())
}

pub(super) fn read_key(path: &Path) -> Result<Keypair, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NodeError::KeyMode { path: path.to_path_buf(), mode });
    }
    let text = std::fs::read(path).map_err(io(path))?;
    let text = String::from_utf8(text)
        .map_err(|_| NodeError::Key { path: path.to_path_buf(), source: KeyError::Header })?;
    Keypair::from_file_text(&text)
        .map_err(|source| NodeError::Key { path: path.to_path_buf(), source })
}

/// The admin token of the node in `dir`, created (random, mode 0600) if missing.
pub fn admin_token(
    dir: &Path,
    random: impl FnOnce() -> Result<[u8; 32], NodeError>,
) -> Result<String, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(TOKEN_FILE);
    let io = |source| NodeError::Io { path: path.clone(), source };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(NodeError::Input(format!(
                    "{}: the admin token is readable by other users (mode {mode:o}); run chmod 600 on it",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let token = text.trim().to_string();
            if token.len() < 32
                || token.len() > crate::web::TOKEN_BYTES_MAX
                || token.contains(char::is_whitespace)
            {
                return Err(NodeError::Input(format!(
                    "{}: not an admin token (32 to {} characters, no spaces); \
                     delete it to get a new one",
                    path.display(),
                    crate::web::TOKEN_BYTES_MAX
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = hex::encode(random()?);
            create_private(&path, format!("{token}\n").as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let t = admin_token(dir.path(), || Ok([7; 32])).expect("created");
        assert_eq!(t.len(), 64);
        assert_eq!(admin_token(dir.path(), || Ok([7; 32])).expect("read"), t);
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(admin_token(dir.path(), || Ok([7; 32])).is_err(), "a readable token is refused");
    }
}
