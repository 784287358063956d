//! The agent's Unix socket. The gRPC contract arrives in a later issue; until then every connection gets one
//! health line (`ok <live> live <closed> closed`) and is closed.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{io::AsyncWriteExt, net::UnixListener};
use tokio_util::sync::CancellationToken;

use crate::{error::Error, table::ConnTable};

/// Mode of the socket file: owner and group may connect (the proxy runs in the agent's group).
pub const SOCKET_MODE: u32 = 0o660;

/// Binds the socket at `path`, replacing a stale socket file left by a dead agent, refusing to steal the
/// socket of a live one, and setting [`SOCKET_MODE`]. Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io = |what: String| move |source| Error::Io { what, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Io {
                what: format!("binding {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Io {
                what: format!("binding {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "another agent is serving on it"),
            });
        }
        fs::remove_file(path).map_err(io(format!("removing stale socket {}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(io(format!("binding {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    Ok(listener)
}

/// Answers each connection with the health line until `cancel` fires.
pub async fn serve(listener: UnixListener, table: Arc<Mutex<ConnTable>>, cancel: CancellationToken) {
    loop {
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the agent socket failed");
                    continue;
                }
            },
        };
        let line = {
            let t = table.lock().unwrap_or_else(PoisonError::into_inner);
            format!("ok {} live {} closed\n", t.live(), t.len() - t.live())
        };
        tokio::spawn(async move {
            if let Err(e) = stream.write_all(line.as_bytes()).await {
                tracing::debug!(error = %e, "health client went away");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_stale_socket_refuses_live_one_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let first = bind(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, SOCKET_MODE);
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another agent is serving"), "{err}");
        drop(first); // the file stays behind, like after a crash
        assert!(path.exists());
        let _second = bind(&path).unwrap();
        let plain = dir.path().join("plain");
        fs::write(&plain, "x").unwrap();
        assert!(bind(&plain).unwrap_err().to_string().contains("not a socket"));
    }
}
