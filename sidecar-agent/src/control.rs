//! The agent's Unix socket: binding it (stale files replaced, live agents left alone, the mode set) and serving
//! `grayscope.v1.Collector` on it with tonic over HTTP/2 (prior knowledge, as Envoy's gRPC client speaks it).
//!
//! Every call is checked against the peer's credentials (`SO_PEERCRED`): a uid that is not allowed gets
//! PERMISSION_DENIED. Messages are bounded by `max_message_bytes` (larger: OUT_OF_RANGE), connections by
//! `max_connections` (more wait in the listen backlog), streams per connection by `max_streams`. Connections of
//! refused peers live in a small pool of their own, so they cannot take the allowed peers' slots. One process
//! holds at most `max_connections_per_peer` connections and one uid `max_connections_per_uid` (more are closed at
//! once); a connection that does not
//! start HTTP/2 within `handshake_timeout`, or has no call open for `idle_timeout`, is closed ([`conn`]); HTTP/2
//! keepalive PINGs close a peer that stops answering. So no single peer can take the slots the reporter needs.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use proto::v1::collector_server::CollectorServer;
use tokio::{net::UnixListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::server::UdsConnectInfo, Request, Status};

use crate::{
    collector::{Core, Service},
    config::AllowedUids,
    error::Error,
    metrics::Metrics,
};

pub mod authority;
pub mod conn;

use conn::{Conn, Held, PeerCounts, PeerSlot, Timeouts};

/// Default mode of the socket file: owner and group may connect (the proxy runs in the agent's group).
pub const SOCKET_MODE: u32 = 0o660;

/// [`bind_with_mode`] with [`SOCKET_MODE`].
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    bind_with_mode(path, SOCKET_MODE)
}

/// Binds the socket at `path`, replacing a stale socket file left by a dead agent, refusing to steal the
/// socket of a live one, and setting `mode`. Must be called inside a tokio runtime.
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener, Error> {
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
    // Bind in a private directory (0700) next to the target, set the mode there, then link it at the target: the
    // socket never appears with the umask's mode, and no one can swap the path for a symlink between bind and
    // chmod (chmod follows symlinks). A path too long for the detour (the 107-byte limit) is bound in place.
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(".grayscope-{}", std::process::id()));
    let staged = path.file_name().map(|name| private.join(name));
    let Some(staged) = staged.filter(|p| p.as_os_str().len() <= 107) else {
        let listener = UnixListener::bind(path).map_err(io(format!("binding {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting the mode of {}", path.display())))?;
        return Ok(listener);
    };
    // Left over by a crash of this pid's predecessor: a directory of ours holding at most a socket.
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io(format!("creating {}", private.display())))?;
    let staged_bind = || -> Result<UnixListener, Error> {
        let listener = UnixListener::bind(&staged).map_err(io(format!("binding {}", staged.display())))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting the mode of {}", staged.display())))?;
        move_into_place(&staged, path)?;
        Ok(listener)
    };
    let out = staged_bind();
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    out
}

/// The socket file an agent bound, removed when this is dropped (the agent stopped, or failed to start after binding)
/// if the path still names that file: a successor's socket bound there meanwhile (after the file was removed by
/// hand) stays.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file when it was bound.
    id: Option<(u64, u64)>,
}

// === impl SocketFile ===

impl SocketFile {
    /// The file at `path`, which [`bind_with_mode`] just placed.
    pub fn of(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            id: Self::id(path),
        }
    }

    fn id(path: &Path) -> Option<(u64, u64)> {
        fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.id.is_some() && Self::id(&self.path) == self.id {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the agent's socket file");
            }
        }
    }
}

/// Places the staged socket at `path`, unless something is there by now: a hard link, which fails if the path
/// exists, as one step (the staged name is removed after). The check for a live agent above and a plain rename
/// leave a window in which a second agent started at the same moment binds the path, and would lose it to this
/// one's rename: its clients would then reach nobody. (`renameat2` with `RENAME_NOREPLACE` does the same, but not
/// on every filesystem.)
fn move_into_place(staged: &Path, path: &Path) -> Result<(), Error> {
    fs::hard_link(staged, path).map_err(|e| Error::Io {
        what: format!("moving the socket to {}", path.display()),
        source: if e.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(std::io::ErrorKind::AddrInUse, "another agent bound it meanwhile")
        } else {
            e
        },
    })
}

/// Limits of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    /// Who may call.
    pub allowed_uids: AllowedUids,
    /// Largest message decoded.
    pub max_message_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Concurrent streams per connection.
    pub max_streams: u32,
    /// Connections one process may hold at once.
    pub max_connections_per_peer: usize,
    /// Connections the processes of one uid may hold at once.
    pub max_connections_per_uid: usize,
    /// Handshake and idle timeouts.
    pub timeouts: Timeouts,
    /// HTTP/2 PING interval, and how long an answer may take.
    pub keepalive: Duration,
}

/// Serves the Collector on `listener` until `cancel` fires (then open streams get a few seconds to end).
pub async fn serve(
    listener: UnixListener,
    core: Arc<Core>,
    settings: ServeSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let allowed = settings.allowed_uids.clone();
    let denied = metrics.permission_denied.clone();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let cred = req.extensions().get::<UdsConnectInfo>().and_then(|i| i.peer_cred);
        match cred {
            Some(c) if allowed.allows(c.uid(), own_uid) => Ok(req),
            _ => {
                denied.inc();
                let who = cred.map_or_else(|| "unknown".to_owned(), |c| c.uid().to_string());
                Err(Status::permission_denied(format!(
                    "uid {who} may not use the grayscope agent (allowed_uids)"
                )))
            }
        }
    };
    let service = CollectorServer::new(Service::new(core))
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let incoming = incoming(
        listener,
        Pools {
            allowed: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            refused: Arc::new(Semaphore::new(REFUSED_CONNECTIONS)),
            policy: settings.allowed_uids.clone(),
            own_uid,
            metrics: Arc::clone(&metrics),
            peers: Arc::default(),
            uids: Arc::default(),
            max_per_peer: settings.max_connections_per_peer.max(1),
            max_per_uid: settings.max_connections_per_uid.max(1),
            timeouts: settings.timeouts,
        },
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_streams)
        .layer(crate::collector::count_oversized(metrics.messages_oversized.clone()))
        // A peer that stops answering (gone without a FIN, or stuck) is closed and frees its slot.
        .http2_keepalive_interval(Some(settings.keepalive))
        .http2_keepalive_timeout(Some(settings.keepalive))
        .add_service(InterceptedService::new(service, check))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    let forced = async {
        cancel.cancelled().await;
        tokio::time::sleep(crate::metrics::DRAIN).await;
    };
    tokio::select! {
        r = server => if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server failed");
        },
        () = forced => tracing::warn!("gRPC connections still open {:?} after shutdown; closing them", crate::metrics::DRAIN),
    }
}

/// Connections of peers whose uid is not allowed that are kept open at once, so they can be told
/// PERMISSION_DENIED; more are closed at once. They never take one of the `max_connections` slots.
pub const REFUSED_CONNECTIONS: usize = 4;

/// The connection pools: allowed peers wait for one of `max_connections` slots (in the listen backlog, since the
/// accept loop waits too); refused peers get one of [`REFUSED_CONNECTIONS`] slots or are closed. A process
/// (pid from `SO_PEERCRED`) holding `max_per_peer` connections has the next one closed at once, so no single
/// peer can take the slots the reporter needs.
#[derive(Clone, Debug)]
struct Pools {
    allowed: Arc<Semaphore>,
    refused: Arc<Semaphore>,
    policy: AllowedUids,
    own_uid: u32,
    metrics: Arc<Metrics>,
    /// Open connections per peer pid, and per uid.
    peers: PeerCounts,
    uids: PeerCounts,
    max_per_peer: usize,
    max_per_uid: usize,
    timeouts: Timeouts,
}

/// Accepted connections, each holding a permit of its pool while it lives.
fn incoming(listener: UnixListener, pools: Pools) -> impl futures_util::Stream<Item = io::Result<Conn>> + Send {
    futures_util::stream::unfold((listener, pools), |(listener, pools)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept on the agent socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let cred = stream.peer_cred().ok();
            let allowed = cred.is_some_and(|c| pools.policy.allows(c.uid(), pools.own_uid));
            let closed = |reason| {
                pools
                    .metrics
                    .connections_closed
                    .get_or_create(&[("reason", reason)])
                    .clone()
            };
            let pid = cred.and_then(|c| c.pid()).unwrap_or(-1);
            let Some(by_pid) = PeerSlot::take(&pools.peers, i64::from(pid), pools.max_per_peer) else {
                closed("per_peer").inc();
                tracing::debug!(
                    pid,
                    "closing a connection on the agent socket: its process holds too many"
                );
                continue;
            };
            let uid = cred.map_or(-1, |c| i64::from(c.uid()));
            let Some(by_uid) = PeerSlot::take(&pools.uids, uid, pools.max_per_uid) else {
                closed("per_uid").inc();
                tracing::debug!(uid, "closing a connection on the agent socket: its uid holds too many");
                continue;
            };
            let peer = (by_pid, by_uid);
            let permit = if allowed {
                Arc::clone(&pools.allowed).acquire_owned().await.ok()?
            } else if let Ok(p) = Arc::clone(&pools.refused).try_acquire_owned() {
                p
            } else {
                drop(peer);
                closed("refused_pool").inc();
                tracing::debug!("closing a connection of a refused peer: too many open");
                continue;
            };
            let open = pools
                .metrics
                .connections
                .get_or_create(&[("pool", if allowed { "allowed" } else { "refused" })])
                .clone();
            open.inc();
            let held = Held {
                permit,
                open,
                peer,
                closed: (closed("handshake_timeout"), closed("idle_timeout")),
            };
            return Some((Ok(Conn::new(stream, held, pools.timeouts)), (listener, pools)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_policy() {
        let own = AllowedUids::Only {
            own: true,
            uids: vec![0],
        };
        assert!(own.allows(0, 1000) && own.allows(1000, 1000) && !own.allows(65534, 1000));
        assert!(AllowedUids::Any.allows(65534, 0));
        let list = AllowedUids::Only {
            own: false,
            uids: vec![12345],
        };
        assert!(!list.allows(0, 0) && list.allows(12345, 0));
    }

    #[tokio::test]
    async fn the_socket_is_staged_privately_then_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        for mode in [0o600, 0o666] {
            let listener = bind_with_mode(&path, mode).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, mode);
            // Still the listening socket after the move, and the private directory is gone.
            let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            drop((client, server, listener));
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["agent.sock"]);
        }
    }

    /// Another agent that bound the path after this one found it free (two started at once) keeps it: the move
    /// fails, saying so, instead of taking the path from a live socket and leaving that agent unreachable.
    #[tokio::test]
    async fn the_move_never_takes_the_path_from_a_socket_bound_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let staged = dir.path().join("staged.sock");
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ours = std::os::unix::net::UnixListener::bind(&staged).unwrap();
        let err = move_into_place(&staged, &path).unwrap_err().to_string();
        assert!(err.contains("another agent"), "{err}");
        // The path still reaches the other agent.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        other.set_nonblocking(true).unwrap();
        assert!(
            other.accept().is_ok(),
            "the path no longer reaches the agent that bound it"
        );
        drop(ours);
    }

    /// The agent's file goes with it; a successor's, bound at the path after the file was removed by hand, stays.
    #[tokio::test]
    async fn the_socket_file_is_removed_unless_another_took_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).unwrap();
        drop(SocketFile::of(&path));
        assert!(!path.exists());
        drop(listener);
        let ours = bind(&path).unwrap();
        let file = SocketFile::of(&path);
        fs::remove_file(&path).unwrap();
        let successor = bind(&path).unwrap();
        drop((file, ours));
        assert!(path.exists(), "the successor's socket was removed");
        drop(successor);
    }

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
        drop(bind_with_mode(&path, 0o600).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let plain = dir.path().join("plain");
        fs::write(&plain, "x").unwrap();
        assert!(bind(&plain).unwrap_err().to_string().contains("not a socket"));
    }
}
