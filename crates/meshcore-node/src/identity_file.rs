//! The node's key file, `<data-dir>/node.key`.
//!
//! The file holds the Ed25519 secret key as PKCS#8 PEM (readable by `openssl pkey`). It is
//! created on first start with mode 0600 and reused on every start after. A file that other
//! users can read, or that does not hold a valid key, is refused with a message naming the
//! file and the fix; it is never overwritten.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use meshcore_proto::NodeKeypair;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// A key file larger than this is not a key file (PEM of an Ed25519 key is ~120 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("cannot access the key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Group or other users have access to the file.
    #[error(
        "the key file {path} has mode {mode:04o}, so other users can read the node's secret key; \
         refusing to use it (run `chmod 600 {path}` if it is yours)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a valid Ed25519 key.
    #[error(
        "the key file {path} is corrupt ({reason}); it was left untouched. Restore it from a \
         backup, or move it away to start with a new identity"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Loads the identity from `path`, creating a new one if the file does not exist.
/// Returns the keypair and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(NodeKeypair, bool), IdentityError> {
    match load(path) {
        Ok(keys) => Ok((keys, false)),
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            match create(path) {
                Ok(keys) => Ok((keys, true)),
                // Another process created it between our two calls: use theirs.
                Err(IdentityError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    load(path).map(|keys| (keys, false))
                }
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// Loads the identity from an existing key file.
pub fn load(path: &Path) -> Result<NodeKeypair, IdentityError> {
    let io_error = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "it is not a regular file".to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} bytes is too large for a key file", metadata.len()),
        });
    }
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text))
        .map_err(|source| match source.kind() {
            io::ErrorKind::InvalidData => IdentityError::Corrupt {
                path: path.to_owned(),
                reason: "it is not text".to_owned(),
            },
            _ => io_error(source),
        })?;
    let signing_key =
        SigningKey::from_pkcs8_pem(&text).map_err(|error| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: format!("not a PKCS#8 PEM Ed25519 key: {error}"),
        })?;
    Ok(NodeKeypair::from_signing_key(signing_key))
}

/// Creates a new identity at `path` (mode 0600). Fails if the file already exists.
pub fn create(path: &Path) -> Result<NodeKeypair, IdentityError> {
    let io_error = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let keys = NodeKeypair::generate(&mut rand::rngs::OsRng);
    let pem = keys
        .signing_key()
        .to_pkcs8_pem(Default::default())
        .map_err(|error| io_error(io::Error::other(error.to_string())))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error)?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(KEY_FILE);
        (dir, path)
    }

    #[test]
    fn created_once_with_mode_0600_and_reused() {
        let (_dir, path) = key_path();
        let (first, created) = load_or_create(&path).expect("create");
        assert!(created);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = load_or_create(&path).expect("load");
        assert!(!created);
        assert_eq!(first.node_id(), second.node_id());
    }

    #[test]
    fn a_world_readable_key_is_refused_and_left_alone() {
        let (_dir, path) = key_path();
        load_or_create(&path).expect("create");
        let before = fs::read(&path).expect("read");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = load_or_create(&path).expect_err("insecure");
        assert!(matches!(
            error,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert_eq!(fs::read(&path).expect("read"), before);
    }

    #[test]
    fn a_corrupt_key_is_refused_and_never_replaced() {
        let (_dir, path) = key_path();
        for garbage in [&b"not a key"[..], b"", &[0xff, 0xfe, 0x00][..]] {
            fs::write(&path, garbage).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let error = load_or_create(&path).expect_err("corrupt");
            assert!(matches!(error, IdentityError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains(KEY_FILE), "{error}");
            assert_eq!(fs::read(&path).expect("read"), garbage);
        }
    }

    #[test]
    fn a_truncated_pem_is_corrupt() {
        let (_dir, path) = key_path();
        load_or_create(&path).expect("create");
        let pem = fs::read_to_string(&path).expect("read");
        fs::write(&path, &pem[..pem.len() / 2]).expect("write");
        assert!(matches!(load(&path), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn a_directory_in_place_of_the_key_is_refused() {
        let (_dir, path) = key_path();
        fs::create_dir(&path).expect("mkdir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(matches!(
            load_or_create(&path),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
