//! The unix socket the driver serves on (CSI allows only unix sockets): `unix:///PATH`.
//! A socket file left by a process that died is removed before binding; one a live
//! process still answers on is refused, and a path that is not a socket is never
//! removed (the user pointed at the wrong file).

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The socket path of a `unix://` endpoint (`unix:///run/csi.sock` -> `/run/csi.sock`).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, Error> {
    let bad = |why: &str| Error::Endpoint {
        endpoint: endpoint.to_owned(),
        why: why.to_owned(),
    };
    let path = endpoint
        .strip_prefix("unix://")
        .ok_or_else(|| bad("CSI endpoints are unix sockets: unix:///PATH"))?;
    if path.is_empty() {
        return Err(bad("the socket path is empty"));
    }
    Ok(PathBuf::from(path))
}

fn socket_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Socket {
        path: path.display().to_string(),
        source,
    }
}

/// Binds the socket at `path` (creating its directory), replacing a stale socket file.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    let err = socket_err(path);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "exists and is not a socket; not removing it",
            )))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::SocketInUse {
                    path: path.display().to_string(),
                })
            }
            // Nobody accepts on it: a previous instance died without removing it.
            Err(_) => std::fs::remove_file(path).map_err(&err)?,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(&err)?;
    }
    tokio::net::UnixListener::bind(path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_endpoints() {
        assert_eq!(
            socket_path("unix:///run/csi/csi.sock").unwrap(),
            PathBuf::from("/run/csi/csi.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:10000").is_err());
        assert!(socket_path("/run/csi.sock").is_err());
        assert!(socket_path("unix://").is_err());
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let live = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(Error::SocketInUse { .. })));
        drop(live);
        // The file stays behind with nobody listening: stale.
        assert!(path.exists());
        let again = bind(&path).unwrap();
        drop(again);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind(&file), Err(Error::Socket { .. })));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
