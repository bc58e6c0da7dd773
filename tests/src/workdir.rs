//! `TestDir`: the per-test temporary directory holding generated daemon configs, sockets and
//! logs. Removed on drop unless `FERRULE_TEST_KEEP=1`, in which case its path is printed so a
//! failure can be inspected afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

pub struct TestDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `/tmp/ferrule-<label>-XXXXXX`. It is world-traversable (0755) because FRR daemons
    /// drop to the `frr` user and must reach their own subdirectory inside it.
    pub fn new(label: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrule-{label}-"))
            .tempdir()
            .context("creating per-test temporary directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.path().display()))?;
        let path = dir.path().to_path_buf();
        Ok(TestDir { dir: Some(dir), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory (created if missing) for one daemon instance.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let sub = self.path.join(name);
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        Ok(sub)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var("FERRULE_TEST_KEEP").as_deref() == Ok("1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("FERRULE_TEST_KEEP=1: kept {}", dir.keep().display());
            }
        }
    }
}
