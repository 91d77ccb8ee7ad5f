//! Files named by tables: how a table names a file (relative to a root that a cache key covers,
//! never by this machine's path), the one resolver that turns such a name into a path on this
//! machine, and the one reader that checks the bytes it read against the content hash the table
//! recorded.
//!
//! Why: an artifact store is shared (a remote cache, two folders with one `[store] path`, a
//! cluster whose nodes mount the data elsewhere), so a table computed on one machine is read on
//! another. A table that held absolute paths would send the second machine to the first one's
//! files, and a stage that trusted a path without checking the bytes could commit results of
//! bytes its key never saw. With relative names, a table is the same bytes on every machine; with
//! the check, an output always matches its key for every file it read.

use std::path::{Component, Path, PathBuf};

use crate::StageError;

/// `path` as a table names it: relative to `root`, `/`-separated. An error when `path` is not
/// inside `root` (a table could then only name it by this machine's path).
pub fn relative_name(root: &Path, path: &Path) -> Result<String, StageError> {
    let rel = path.strip_prefix(root).map_err(|_| {
        StageError::file(
            path,
            format!(
                "is outside the dataset folder {}: tables name files relative to it, so every \
                 file a dataset uses must be inside it",
                root.display()
            ),
        )
    })?;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| StageError::file(path, "the file's name is not valid UTF-8"))?,
            ),
            Component::CurDir => {}
            _ => {
                return Err(StageError::file(
                    path,
                    format!("cannot be named relative to {}", root.display()),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err(StageError::file(path, "names the dataset folder itself"));
    }
    Ok(parts.join("/"))
}

/// The path on this machine of the file a table names `name` under `root`. A name that is
/// absolute or climbs out of the root (`..`) is refused: it was not written by this version, and
/// following it could read a file the key never covered.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, StageError> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(StageError::file(
            root.join(name),
            format!(
                "the table names the file as {name:?}, not relative to its root: it was written \
                 by an older version; run the `images` stage again"
            ),
        ));
    }
    Ok(root.join(rel))
}

/// The bytes of `path`, checked against `hash` (BLAKE3 hex, as the `images` table records it).
/// A missing file and a file whose content differs are errors that name the file and say to run
/// the `images` stage again (which records the files as they are now).
pub fn read_checked(path: &Path, hash: &str) -> Result<Vec<u8>, StageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StageError::file(
                path,
                "not found, although the images table lists it: the dataset folder changed \
                 since it was read; run the `images` stage again",
            ))
        }
        Err(e) => return Err(StageError::io(path, e)),
    };
    let found = blake3::hash(&bytes).to_hex();
    if found.as_str() != hash {
        return Err(StageError::file(
            path,
            format!(
                "content differs from the hash the images table recorded ({} now, {} recorded): \
                 the file changed since it was read, so nothing computed from it is kept; run \
                 the `images` stage again",
                &found.as_str()[..12],
                hash.get(..12).unwrap_or(hash)
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_and_slash_separated() {
        let root = Path::new("/data/flickr");
        let name = relative_name(root, &root.join("Images").join("a.jpg")).unwrap();
        assert_eq!(name, "Images/a.jpg");
        assert_eq!(
            resolve(Path::new("/elsewhere"), &name).unwrap(),
            Path::new("/elsewhere/Images/a.jpg")
        );
    }

    #[test]
    fn files_outside_the_root_and_foreign_names_are_refused() {
        let root = Path::new("/data/flickr");
        assert!(relative_name(root, Path::new("/data/other/a.jpg")).is_err());
        assert!(relative_name(root, root).is_err());
        for name in ["/data/flickr/a.jpg", "../a.jpg", "Images/../../a.jpg", ""] {
            let err = resolve(root, name).unwrap_err().to_string();
            assert!(
                err.contains("run the `images` stage again"),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn reads_are_checked_against_the_recorded_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, b"picture").unwrap();
        let hash = blake3::hash(b"picture").to_hex().to_string();
        assert_eq!(read_checked(&path, &hash).unwrap(), b"picture");
        std::fs::write(&path, b"another picture").unwrap();
        let err = read_checked(&path, &hash).unwrap_err().to_string();
        assert!(
            err.contains("a.jpg") && err.contains("content differs"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = read_checked(&path, &hash).unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
    }
}
