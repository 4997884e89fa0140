//! How nodes talk: TCP connections on the cluster port, each opened by a handshake in which
//! both sides prove they hold the cluster's secret (as RabbitMQ's nodes share an Erlang
//! cookie), then request and response frames: `length u32 | bincode`. A connection carries one
//! request at a time; openraft opens one client per peer and replication stream.
//!
//! The handshake: the client sends the magic, its node name and a random nonce; the server
//! answers with the magic, its name, its own nonce and SHA-256(secret | "server" | client's
//! nonce); the client checks that and answers SHA-256(secret | "client" | server's nonce). A
//! peer without the secret learns nothing but the server's name, and is logged and dropped.

use super::host::{BoxConn, Host};
use super::quorum::Outcome;
use super::types::{Batch, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const MAGIC: &[u8; 8] = b"HARECL01";
/// A frame larger than this ends the connection: batches are bounded well below it.
const MAX_FRAME: usize = 512 * 1024 * 1024;
/// The handshake's strings are node names.
const MAX_NAME: usize = 255;
/// A peer has this long to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's batch, for the leader to propose.
    Propose(Batch),
    /// Whether the node belongs to a formed cluster.
    Info,
    /// Take node `id` at `addr` in (sent to any member; forwarded to the leader).
    Join {
        id: NodeId,
        addr: String,
    },
    /// Take node `id` out.
    Forget {
        id: NodeId,
    },
    /// The node's alarms and shovels (see [`super::reports`]).
    Report,
    /// A request to the home of classic queues (see [`super::classic`]).
    Classic(super::classic::Op),
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The batch's log index and its outcomes.
    Proposed(Result<(u64, Vec<Outcome>), ProposeError>),
    Info {
        name: String,
        formed: bool,
    },
    Membership(Result<(), String>),
    Report(super::reports::NodeReport),
    Classic(super::classic::Reply),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ProposeError {
    /// This node does not lead; the one it believes does.
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// What the transport shares: the secret, this node's name, the host it dials from, when
/// each peer last answered, and the names peers gave in handshakes.
pub struct NetCtx {
    pub name: String,
    secret: Vec<u8>,
    pub host: Arc<dyn Host>,
    last_ok: Mutex<HashMap<NodeId, Instant>>,
    /// Names by id from handshakes that proved the secret: a peer is named here before its
    /// `Hello` is applied (a new leader's may still be in flight).
    met: Mutex<HashMap<NodeId, String>>,
}

impl NetCtx {
    pub fn new(name: String, secret: Vec<u8>, host: Arc<dyn Host>) -> Arc<NetCtx> {
        Arc::new(NetCtx { name, secret, host, last_ok: Mutex::new(HashMap::new()), met: Mutex::new(HashMap::new()) })
    }

    /// A connection to `addr`, within [`CONNECT_TIMEOUT`].
    async fn dial(&self, addr: &str) -> Result<BoxConn, WireError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.host.dial(addr.to_string()))
            .await
            .map_err(|_| WireError::Timeout)?
            .map_err(WireError::Io)
    }
    /// How long ago `node` last answered an RPC of ours (None: never).
    pub fn silent_for(&self, node: NodeId) -> Option<Duration> {
        self.last_ok.lock().get(&node).map(Instant::elapsed)
    }
    /// The name `node` gave when it last completed a handshake with this node.
    pub fn name_of(&self, node: NodeId) -> Option<String> {
        self.met.lock().get(&node).cloned()
    }
    /// Records a peer that proved the secret (ids are derived from names, so bounded by them).
    fn met(&self, name: &str) {
        let id = super::types::node_id(name);
        let mut met = self.met.lock();
        if met.get(&id).map(String::as_str) != Some(name) {
            met.insert(id, name.to_string());
        }
    }
    fn answered(&self, node: NodeId) {
        self.last_ok.lock().insert(node, Instant::now());
    }
    fn proof(&self, role: &[u8], nonce: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.secret);
        h.update(role);
        h.update(nonce);
        h.finalize().into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Decode(#[from] bincode::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("peer {0} does not hold the cluster's secret")]
    BadSecret(String),
    #[error("not a Hare cluster peer")]
    BadMagic,
    #[error("timed out")]
    Timeout,
}

/// A frame buffer larger than this is not kept for the next frame (a snapshot's, say).
const KEEP_BUFFER: usize = 8 * 1024 * 1024;

/// Writes `v` as one frame, encoded into `buf` (a connection's, kept between frames: a large
/// frame costs no fresh pages each time).
pub async fn write_frame<S: AsyncWrite + Unpin, T: Serialize>(
    s: &mut S,
    buf: &mut Vec<u8>,
    v: &T,
) -> Result<(), WireError> {
    buf.clear();
    buf.reserve(4 + bincode::serialized_size(v)? as usize);
    buf.extend_from_slice(&[0; 4]);
    bincode::serialize_into(&mut *buf, v)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let r = s.write_all(buf).await;
    keep(buf);
    Ok(r?)
}

/// Reads one frame into `buf` (kept between frames, as [`write_frame`]'s) and decodes it.
pub async fn read_frame<S: AsyncRead + Unpin, T: DeserializeOwned>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<T, WireError> {
    let len = s.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    let r = s.read_exact(buf).await;
    let v = r.map_err(WireError::from).and_then(|_| Ok(bincode::deserialize(buf)?));
    keep(buf);
    v
}

/// Drops a buffer grown past [`KEEP_BUFFER`].
fn keep(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUFFER {
        *buf = Vec::new();
    }
}

async fn write_hello<S: AsyncWrite + Unpin>(s: &mut S, name: &str, nonce: &[u8; 32]) -> Result<(), WireError> {
    let mut b = Vec::with_capacity(8 + 1 + name.len() + 32);
    b.extend_from_slice(MAGIC);
    let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b.extend_from_slice(nonce);
    s.write_all(&b).await?;
    Ok(())
}

async fn read_hello<S: AsyncRead + Unpin>(s: &mut S) -> Result<(String, [u8; 32]), WireError> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    let n = s.read_u8().await? as usize;
    let mut name = vec![0; n];
    s.read_exact(&mut name).await?;
    let mut nonce = [0u8; 32];
    s.read_exact(&mut nonce).await?;
    Ok((String::from_utf8_lossy(&name).into_owned(), nonce))
}

/// The client's side of the handshake; returns the server's node name.
pub async fn handshake_client<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, ctx: &NetCtx) -> Result<String, WireError> {
    let nonce: [u8; 32] = rand::random();
    write_hello(s, &ctx.name, &nonce).await?;
    let (peer, peer_nonce) = read_hello(s).await?;
    let mut proof = [0u8; 32];
    s.read_exact(&mut proof).await?;
    if proof != ctx.proof(b"server", &nonce) {
        return Err(WireError::BadSecret(peer));
    }
    s.write_all(&ctx.proof(b"client", &peer_nonce)).await?;
    ctx.met(&peer);
    Ok(peer)
}

/// The server's side of the handshake; returns the client's node name.
pub async fn handshake_server<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, ctx: &NetCtx) -> Result<String, WireError> {
    let (peer, peer_nonce) = read_hello(s).await?;
    let nonce: [u8; 32] = rand::random();
    write_hello(s, &ctx.name, &nonce).await?;
    s.write_all(&ctx.proof(b"server", &peer_nonce)).await?;
    let mut proof = [0u8; 32];
    s.read_exact(&mut proof).await?;
    if proof != ctx.proof(b"client", &nonce) {
        return Err(WireError::BadSecret(peer));
    }
    ctx.met(&peer);
    Ok(peer)
}

/// A connection to a peer, opened on first use and again after a failure.
pub struct Peer {
    pub addr: String,
    ctx: Arc<NetCtx>,
    conn: Option<BoxConn>,
    /// The frames' buffer, kept between calls.
    buf: Vec<u8>,
    /// Whether the last call had a connection (open, or opened and past the handshake):
    /// a failure after that is the request's, not the peer's being unreachable.
    connected: bool,
}

impl Peer {
    pub fn new(addr: String, ctx: Arc<NetCtx>) -> Peer {
        Peer { addr, ctx, conn: None, connected: false, buf: Vec::new() }
    }

    async fn connect(&mut self) -> Result<&mut BoxConn, WireError> {
        if self.conn.is_none() {
            let mut s = self.ctx.dial(&self.addr).await?;
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_client(&mut s, &self.ctx))
                .await
                .map_err(|_| WireError::Timeout)??;
            self.conn = Some(s);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    /// One request and its response, within `ttl`; the connection is dropped on any failure.
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, WireError> {
        self.connected = false;
        let r = tokio::time::timeout(ttl, async {
            self.connect().await?;
            self.connected = true;
            let s = self.conn.as_mut().expect("connected");
            write_frame(s, &mut self.buf, req).await?;
            read_frame::<_, Response>(s, &mut self.buf).await
        })
        .await
        .map_err(|_| WireError::Timeout)
        .and_then(|r| r);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// openraft's client for one peer.
pub struct Network {
    target: NodeId,
    peer: Peer,
    connected_once: bool,
}

/// Makes openraft's clients.
#[derive(Clone)]
pub struct Factory {
    pub ctx: Arc<NetCtx>,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Network;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network { target, peer: Peer::new(node.addr.clone(), self.ctx.clone()), connected_once: false }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Network {
    async fn rpc<E: std::error::Error>(&mut self, req: Request, option: &RPCOption) -> Result<Response, RpcErr<E>> {
        match self.peer.call(&req, option.hard_ttl()).await {
            Ok(r) => {
                self.connected_once = true;
                self.peer.ctx.answered(self.target);
                Ok(r)
            }
            // Unreachable makes openraft back off (500 ms) before it tries again: for a peer
            // that cannot be connected to. A request that failed on a connection (a large
            // AppendEntries past its timeout, say) is tried again at once, on a new one.
            Err(e @ (WireError::Io(_) | WireError::Timeout)) if !self.connected_once || !self.peer.connected => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>() -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("unexpected response")))
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self.rpc(Request::Append(rpc), &option).await? {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.rpc(Request::Snapshot(rpc), &option).await? {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.rpc(Request::Vote(rpc), &option).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }
}
