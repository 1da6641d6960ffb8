//! The data directory: where the key file and the database live.
//!
//! With no `--data-dir`, a node uses the per-user data directory of the platform
//! (`$XDG_DATA_HOME/meshcore`, usually `~/.local/share/meshcore`, on Linux).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No home directory is known, so there is no default; `--data-dir` must be given.
    #[error("no per-user data directory is known (is $HOME set?); pass --data-dir DIR")]
    NoDefault,
    /// The directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The directory exists but files cannot be written in it.
    #[error("the data directory {path} is not writable: {source}")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The per-user default data directory.
pub fn default_data_dir() -> Result<PathBuf, DataDirError> {
    directories::ProjectDirs::from("", "", "meshcore")
        .map(|dirs| dirs.data_dir().to_owned())
        .ok_or(DataDirError::NoDefault)
}

/// Creates `path` if needed and proves that files can be written in it.
pub fn prepare(path: &Path) -> Result<(), DataDirError> {
    fs::create_dir_all(path).map_err(|source| DataDirError::Create {
        path: path.to_owned(),
        source,
    })?;
    let probe = path.join(".meshcore-write-probe");
    let result = fs::File::create(&probe).and_then(|mut file| file.write_all(b"ok"));
    let _ = fs::remove_file(&probe);
    result.map_err(|source| DataDirError::NotWritable {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nested = dir.path().join("a/b/c");
        prepare(&nested).expect("prepare");
        assert!(nested.is_dir());
        assert!(!nested.join(".meshcore-write-probe").exists());
    }

    #[test]
    fn a_path_below_a_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").expect("write");
        let error = prepare(&file.join("data")).expect_err("below a file");
        assert!(error.to_string().contains("plain-file"), "{error}");
    }
}
