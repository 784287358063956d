//! `grayscope-agent install-module`: copies the filter's native build (the Envoy dynamic module the agent's image
//! carries) into a directory, for the init container that the injector adds to pods which opt into the native
//! build. The image has no shell and no `cp`, so the agent binary does the copy itself.
//!
//! The file appears whole or not at all: it is written under a temporary name in the same directory and renamed
//! into place, so an `istio-proxy` that looks early never loads half a module.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// Where the agent's image carries the module (`istio/package/oci_layout.py`).
pub const IMAGE_MODULE: &str = "/usr/local/lib/grayscope/libgrayscope_filter.so";

/// Why the copy failed, with the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read the module {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a shared object (no ELF header)")]
    NotElf { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Copies `module` into `dir` under its own file name, readable by every user (istio-proxy runs as uid 1337),
/// and returns the path written.
pub fn install(module: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    let bytes = fs::read(module).map_err(|source| InstallError::Read {
        path: module.to_owned(),
        source,
    })?;
    // A shared object starts with the ELF magic; anything else would only fail later, inside Envoy.
    if !bytes.starts_with(b"\x7fELF") {
        return Err(InstallError::NotElf {
            path: module.to_owned(),
        });
    }
    let name = module.file_name().unwrap_or(module.as_os_str());
    let target = dir.join(name);
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = |path: &Path| -> std::io::Result<()> {
        let mut file = fs::File::create(path)?;
        file.write_all(&bytes)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        fs::rename(path, &target)
    };
    write(&temp).map_err(|source| InstallError::Write {
        path: target.clone(),
        source,
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_module_is_copied_whole_readable_by_all_and_nothing_else_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("libgrayscope_filter.so");
        fs::write(&module, b"\x7fELF and the rest").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let written = install(&module, &out).unwrap();
        assert_eq!(written, out.join("libgrayscope_filter.so"));
        assert_eq!(fs::read(&written).unwrap(), b"\x7fELF and the rest");
        assert_eq!(fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["libgrayscope_filter.so"]);
        // Run twice (an init container restarted): the same result.
        install(&module, &out).unwrap();
        assert_eq!(fs::read(&written).unwrap(), b"\x7fELF and the rest");
    }

    #[test]
    fn a_missing_module_a_non_elf_file_and_a_missing_directory_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.so");
        let err = install(&missing, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cannot read the module") && err.contains("nope.so"),
            "{err}"
        );

        let text = dir.path().join("text.so");
        fs::write(&text, b"#!/bin/sh").unwrap();
        let err = install(&text, dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a shared object") && err.contains("text.so"), "{err}");

        let module = dir.path().join("lib.so");
        fs::write(&module, b"\x7fELF").unwrap();
        let err = install(&module, &dir.path().join("absent")).unwrap_err().to_string();
        assert!(err.contains("cannot write") && err.contains("absent/lib.so"), "{err}");
    }
}
