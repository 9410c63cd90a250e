//! [`ModelFile`]: a model file opened once, so that what the validator
//! (`validate.rs`) reads is what llama.cpp loads.

use crate::error::{Error, Result};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// A model file opened once, so that the file the validator reads is the
/// file llama.cpp loads. On Linux both open `/proc/self/fd/N` of this open
/// file: the same inode, whatever happens to the name meanwhile (a rename or
/// a replacement cannot swap the file between validation and load).
/// Elsewhere, and for split models (llama.cpp derives the other parts' names
/// from the first one's), both get the path's exact bytes, and the file
/// behind the name is checked to still be this one just before the load.
pub(crate) struct ModelFile {
    file: std::fs::File,
    path: PathBuf,
    /// What gguf and llama.cpp open.
    c_path: CString,
    by_name: bool,
}

impl ModelFile {
    /// Opens `path` (a missing file is [`Error::Io`], a folder or device
    /// [`Error::InvalidModel`]).
    pub(crate) fn open(path: &Path) -> Result<ModelFile> {
        let c_path = crate::ffi::path_cstring(path, "model path")?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::InvalidModel { path: path.into(), message: "not a regular file".into() });
        }
        let mut f = ModelFile { c_path, file, path: path.into(), by_name: true };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd_path = format!("/proc/self/fd/{}", f.file.as_raw_fd());
            if std::fs::metadata(&fd_path).is_ok_and(|m| same_file(&m, &meta)) {
                f.c_path = CString::new(fd_path).expect("no NUL in a /proc path");
                f.by_name = false;
            }
        }
        Ok(f)
    }

    /// The path as the caller gave it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Hands llama.cpp the file's own name (split models).
    pub(crate) fn use_name(&mut self) -> Result<()> {
        self.c_path = crate::ffi::path_cstring(&self.path, "model path")?;
        self.by_name = true;
        Ok(())
    }

    /// The path to give gguf and llama.cpp, checked to still name this file.
    pub(crate) fn c_path(&self) -> Result<&CStr> {
        if self.by_name {
            let now = std::fs::metadata(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let opened = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
            if !same_file(&now, &opened) {
                return Err(Error::InvalidModel {
                    path: self.path.clone(),
                    message: "the file was replaced while it was being opened: load it again".into(),
                });
            }
        }
        Ok(&self.c_path)
    }

    /// The file's length in bytes.
    pub(crate) fn len(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len())
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

#[cfg(all(test, feature = "synthetic"))]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::synthetic::{ModelShape, SyntheticModel};

    #[test]
    fn a_model_file_is_opened_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = SyntheticModel::new(ModelShape::tiny()).write_cached(dir.path()).unwrap();
        let mut f = ModelFile::open(&path).unwrap();
        // On Linux gguf and llama.cpp open this very file through /proc.
        #[cfg(target_os = "linux")]
        assert!(f.c_path().unwrap().to_bytes().starts_with(b"/proc/self/fd/"), "{:?}", f.c_path());
        let expected_len = f.len().unwrap();
        // Replace the file behind the name: the opened one is still read.
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, b"not a model").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(f.len().unwrap(), expected_len);
        #[cfg(target_os = "linux")]
        Gguf::read(&f, &[]).expect("the opened file, not the replacement");
        // By name (split models), the replacement is noticed before any load.
        f.use_name().unwrap();
        match f.c_path() {
            Err(Error::InvalidModel { message, .. }) => assert!(message.contains("replaced"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ModelFile::open(dir.path()), Err(Error::InvalidModel { .. })));
        assert!(matches!(ModelFile::open(&dir.path().join("missing")), Err(Error::Io { .. })));
        assert!(matches!(ModelFile::open(Path::new("a\0b")), Err(Error::Nul { .. })));
    }
}
