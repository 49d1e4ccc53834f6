//! The realtime hub: which WebSocket connections are open on this node, which rooms each one
//! follows, and the fan-out of room events to them.
//!
//! - Every connection has its own bounded queue of outgoing frames. Publishing never waits:
//!   a connection whose queue is full is a slow consumer and is closed (4009); it resumes later
//!   from its last seen message. So one stuck client can neither stall a room nor grow memory.
//! - A frame is serialized once per event and shared (a reference-counted `ByteString`) by
//!   every recipient.
//! - Events of one room are published in the order their messages were stored:
//!   [`Hub::order`] hands out a per-room lock that the chat service holds from storing a
//!   message until it is published. Without it two posts committed as ids 10 and 11 could be
//!   published 11 first, and a client that disconnected in between would resume after 11 and
//!   never see 10.
//! - Presence is per room and per person, aggregated over all of their connections that follow
//!   the room: online if any is online, away if all are away, offline when none is left.
//! - Admission control (connections per IP and per user, handshakes per IP per minute) happens
//!   here, before the upgrade, so refused clients get a plain 429.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytestring::ByteString;
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::relay::Wire;
use crate::settings::RealtimeSettings;

/// Close codes of the realtime endpoint (documented in docs/protocol.md).
pub mod close {
    /// The client or server ended the connection normally.
    pub const NORMAL: u16 = 1000;
    /// The client sent a binary frame; this protocol speaks JSON text frames.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame larger than `realtime.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Something failed on the server.
    pub const INTERNAL: u16 = 1011;
    /// The node is shutting down: reconnect (to another node).
    pub const RESTARTING: u16 = 1012;
    /// Nothing (not even a pong) arrived within `realtime.heartbeat_timeout_secs`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The session or token ended (sign-out, revocation, expiry, disabled account).
    pub const SIGNED_OUT: u16 = 4001;
    /// More frames per second than `realtime.messages_per_second` allows.
    pub const RATE_LIMITED: u16 = 4008;
    /// The connection fell `realtime.queue_capacity` events behind; resume from the last
    /// seen message.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// An administrator closed the connection.
    pub const DISCONNECTED: u16 = 4010;
    /// The same device connected again; this older connection ends.
    pub const REPLACED: u16 = 4011;

    /// A short reason for the close frame and the metrics label.
    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "normal",
            UNSUPPORTED_DATA => "binary frames are not supported",
            TOO_BIG => "frame too large",
            INTERNAL => "internal error",
            RESTARTING => "server restarting: reconnect",
            HEARTBEAT_TIMEOUT => "heartbeat timeout",
            SIGNED_OUT => "signed out",
            RATE_LIMITED => "too many frames",
            SLOW_CONSUMER => "too far behind: resume",
            DISCONNECTED => "disconnected by an administrator",
            REPLACED => "replaced by a newer connection",
            _ => "closed",
        }
    }
}

/// How the connection authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// A browser with its session cookie.
    Browser,
    /// A script with a personal API token.
    Token,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Browser => "browser",
            Self::Token => "token",
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: ConnectionKind,
    pub user_id: i64,
    pub name: String,
    /// The session's id (the SHA-256 of its cookie token), for browsers.
    pub session_id: Option<String>,
    /// The API token's id, for scripts.
    pub token_id: Option<i64>,
    /// False for read-only tokens: they may follow rooms but not post, edit or delete.
    pub may_write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Offline = 0,
    Away = 1,
    Online = 2,
}

impl Presence {
    fn from_u8(value: u8) -> Self {
        match value {
            2 => Self::Online,
            1 => Self::Away,
            _ => Self::Offline,
        }
    }
}

/// What the hub puts into a connection's queue: 16 bytes, because every connection's queue
/// allocates its first block of slots up front (the frame itself is shared).
#[derive(Debug, Clone)]
pub enum Outbound {
    Frame(Arc<Frame>),
    /// The person's membership of `room` changed: the connection checks whether it may still
    /// follow the room.
    Recheck(i64),
}

/// A serialized event of a room, shared by every recipient.
#[derive(Debug)]
pub struct Frame {
    pub room: i64,
    /// The id when the frame announces a new message, so a connection that just replayed
    /// history can skip what it already sent.
    pub new_message: Option<i64>,
    pub json: ByteString,
}

/// One open WebSocket connection, as the hub sees it.
pub struct Connection {
    pub id: u64,
    pub principal: Principal,
    pub ip: Option<IpAddr>,
    pub since: DateTime<Utc>,
    queue: mpsc::Sender<Outbound>,
    /// Cancelled when the server closes the connection; `close_code` says why.
    closing: CancellationToken,
    close_code: AtomicU16,
    presence: AtomicU8,
    rooms: Mutex<BTreeSet<i64>>,
}

impl Connection {
    /// Asks the connection to close with `code` (the first reason given wins).
    pub fn close(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.closing.cancel();
    }

    /// Completes when the server wants this connection closed.
    pub fn closing(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    /// Why the server closed it (0 while it has not).
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::SeqCst)
    }

    pub fn presence(&self) -> Presence {
        Presence::from_u8(self.presence.load(Ordering::Relaxed))
    }

    pub fn rooms(&self) -> Vec<i64> {
        self.rooms
            .lock()
            .map(|rooms| rooms.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn follows(&self, room: i64) -> bool {
        self.rooms.lock().is_ok_and(|rooms| rooms.contains(&room))
    }
}

/// A live connection as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub kind: ConnectionKind,
    pub user_id: i64,
    pub name: String,
    pub ip: Option<String>,
    pub since: String,
    pub presence: Presence,
    pub rooms: Vec<i64>,
}

/// Why an upgrade was refused before it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ShuttingDown,
    HandshakeRate,
    TooManyForIp,
    TooManyForUser,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::HandshakeRate => "handshake_rate",
            Self::TooManyForIp => "connections_per_ip",
            Self::TooManyForUser => "connections_per_user",
        }
    }
}

/// A person's presence in a room changed, over this node's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    pub room: i64,
    pub user_id: i64,
    pub before: Presence,
    pub state: Presence,
}

impl PresenceChange {
    /// The change from `before` to `after`, if there is one.
    fn between(room: i64, user_id: i64, before: Presence, after: Presence) -> Option<Self> {
        (before != after).then_some(Self {
            room,
            user_id,
            before,
            state: after,
        })
    }
}

/// Presence reported by other nodes: per room and person, each node's state and the name to
/// show.
#[derive(Default)]
struct RemotePresence {
    entries: HashMap<(i64, i64), (String, HashMap<u64, Presence>)>,
}

impl RemotePresence {
    fn best(&self, room: i64, user: i64) -> Presence {
        self.entries
            .get(&(room, user))
            .and_then(|(_, nodes)| nodes.values().max().copied())
            .unwrap_or(Presence::Offline)
    }
}

#[derive(Default)]
struct State {
    connections: HashMap<u64, Arc<Connection>>,
    rooms: HashMap<i64, HashMap<u64, Arc<Connection>>>,
    per_ip: HashMap<IpAddr, u32>,
    per_user: HashMap<i64, u32>,
}

impl State {
    /// A person's presence in a room: the best state among their connections following it.
    fn presence_of(&self, room: i64, user_id: i64) -> Presence {
        self.rooms
            .get(&room)
            .into_iter()
            .flat_map(|subscribers| subscribers.values())
            .filter(|c| c.principal.user_id == user_id)
            .map(|c| c.presence())
            .max()
            .unwrap_or(Presence::Offline)
    }
}

/// Number of per-room ordering locks; rooms share one when their ids collide modulo this.
const ORDER_STRIPES: usize = 256;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// This node's id among the nodes sharing a database (random per start).
    node: u64,
    /// Where events for other nodes go, when a relay runs (PostgreSQL).
    relay: std::sync::OnceLock<mpsc::UnboundedSender<Wire>>,
    remote: Mutex<RemotePresence>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    order: Vec<tokio::sync::Mutex<()>>,
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    settings: RealtimeSettings,
}

impl Hub {
    pub fn new(settings: &RealtimeSettings) -> Self {
        let per_minute =
            NonZeroU32::new(settings.handshakes_per_ip_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                node: rand::random(),
                relay: std::sync::OnceLock::new(),
                remote: Mutex::new(RemotePresence::default()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                order: (0..ORDER_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                handshakes: RateLimiter::keyed(Quota::per_minute(per_minute)),
                settings: settings.clone(),
            }),
        }
    }

    pub fn settings(&self) -> &RealtimeSettings {
        &self.inner.settings
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> u64 {
        self.inner.node
    }

    /// Sends events for other nodes to `relay` from now on.
    pub fn attach_relay(&self, relay: mpsc::UnboundedSender<Wire>) {
        let _ = self.inner.relay.set(relay);
    }

    /// Passes an event on to the other nodes (when there are any).
    pub fn forward(&self, wire: Wire) {
        if let Some(relay) = self.inner.relay.get() {
            let _ = relay.send(wire);
        }
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemotePresence> {
        self.inner
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any connection on this node follows `room`.
    pub fn has_followers(&self, room: i64) -> bool {
        self.read().rooms.contains_key(&room)
    }

    /// Publishes presence changes of this node's connections: other nodes hear this node's
    /// state, local followers the person's state over every node, where that changed.
    pub fn presence_changed(&self, changes: &[PresenceChange], name: &str) {
        for change in changes {
            self.forward(Wire::Presence {
                n: self.inner.node,
                r: change.room,
                u: change.user_id,
                name: name.to_owned(),
                s: change.state,
            });
            let elsewhere = self.remote().best(change.room, change.user_id);
            let (before, after) = (change.before.max(elsewhere), change.state.max(elsewhere));
            if before != after {
                self.publish_frame(
                    change.room,
                    super::protocol::presence(change.room, change.user_id, name, after).into(),
                );
            }
        }
    }

    /// Another node's presence for a person in a room.
    pub fn remote_presence(&self, node: u64, room: i64, user: i64, name: &str, state: Presence) {
        let here = self.read().presence_of(room, user);
        let (before, after) = {
            let mut remote = self.remote();
            let before = remote.best(room, user);
            let entry = remote
                .entries
                .entry((room, user))
                .or_insert_with(|| (name.to_owned(), HashMap::new()));
            entry.0 = name.to_owned();
            if state == Presence::Offline {
                entry.1.remove(&node);
                if entry.1.is_empty() {
                    remote.entries.remove(&(room, user));
                }
            } else {
                entry.1.insert(node, state);
            }
            (before, remote.best(room, user))
        };
        let (before, after) = (before.max(here), after.max(here));
        if before != after {
            self.publish_frame(
                room,
                super::protocol::presence(room, user, name, after).into(),
            );
        }
    }

    /// Forgets everything another node reported (it stopped, or went silent).
    pub fn forget_node(&self, node: u64) {
        let entries: Vec<(i64, i64, String)> = self
            .remote()
            .entries
            .iter()
            .filter(|(_, (_, nodes))| nodes.contains_key(&node))
            .map(|((room, user), (name, _))| (*room, *user, name.clone()))
            .collect();
        for (room, user, name) in entries {
            self.remote_presence(node, room, user, &name, Presence::Offline);
        }
    }

    /// This node's presence for every person in every room (for a node that just joined).
    pub fn local_presence(&self) -> Vec<(i64, i64, String, Presence)> {
        let state = self.read();
        let mut seen: HashMap<(i64, i64), (String, Presence)> = HashMap::new();
        for (room, subscribers) in &state.rooms {
            for connection in subscribers.values() {
                let entry = seen
                    .entry((*room, connection.principal.user_id))
                    .or_insert_with(|| (connection.principal.name.clone(), Presence::Offline));
                entry.1 = entry.1.max(connection.presence());
            }
        }
        seen.into_iter()
            .map(|((room, user), (name, state))| (room, user, name, state))
            .collect()
    }

    /// Publishes a frame to `room`'s followers here and on the other nodes. Frames over
    /// [`super::relay::MAX_FRAME_BYTES`] stay on this node (callers split what they stream).
    pub fn publish_everywhere(&self, room: i64, json: String) {
        if json.len() <= super::relay::MAX_FRAME_BYTES {
            self.forward(Wire::Frame {
                n: self.inner.node,
                r: room,
                f: json.clone(),
            });
        } else {
            tracing::warn!(room, bytes = json.len(), "frame too large to relay");
        }
        self.publish_frame(room, json.into());
    }

    /// Someone is typing in `room` (published here and on the other nodes).
    pub fn typing(&self, room: i64, user: i64, name: &str) {
        self.publish_frame(room, super::protocol::typing(room, user, name).into());
        self.forward(Wire::Typing {
            n: self.inner.node,
            r: room,
            u: user,
            name: name.to_owned(),
        });
    }

    /// Someone's read marker in `room` moved (published here and on the other nodes).
    pub fn read_moved(&self, room: i64, user: i64, message: i64) {
        self.publish_frame(
            room,
            super::protocol::read(room, user, message, None).into(),
        );
        self.forward(Wire::Read {
            n: self.inner.node,
            r: room,
            u: user,
            i: message,
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every mutation is one insert
        // or remove), so a poisoned lock is still usable.
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a handshake from `ip`; refuses when it comes too fast. Checked before the
    /// credentials are, so guessing tokens over WebSockets is as slow as over HTTP.
    pub fn check_handshake(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown);
        }
        match ip {
            Some(ip) if self.inner.handshakes.check_key(&ip).is_err() => {
                Err(Refusal::HandshakeRate)
            }
            _ => Ok(()),
        }
    }

    /// Registers a new connection if the per-IP and per-user limits allow it. The receiver is
    /// the connection's queue.
    pub fn register(
        &self,
        principal: Principal,
        ip: Option<IpAddr>,
    ) -> Result<(Arc<Connection>, mpsc::Receiver<Outbound>), Refusal> {
        let settings = &self.inner.settings;
        let mut state = self.write();
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown);
        }
        if let Some(ip) = ip
            && state.per_ip.get(&ip).copied().unwrap_or(0) >= settings.connections_per_ip
        {
            return Err(Refusal::TooManyForIp);
        }
        if state.per_user.get(&principal.user_id).copied().unwrap_or(0)
            >= settings.connections_per_user
        {
            return Err(Refusal::TooManyForUser);
        }
        let (sender, receiver) = mpsc::channel(settings.queue_capacity);
        let connection = Arc::new(Connection {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            ip,
            since: Utc::now(),
            queue: sender,
            closing: CancellationToken::new(),
            close_code: AtomicU16::new(0),
            presence: AtomicU8::new(Presence::Online as u8),
            rooms: Mutex::new(BTreeSet::new()),
            principal,
        });
        if let Some(ip) = ip {
            *state.per_ip.entry(ip).or_default() += 1;
        }
        *state
            .per_user
            .entry(connection.principal.user_id)
            .or_default() += 1;
        state.connections.insert(connection.id, connection.clone());
        metrics::gauge!("ws_connections", "kind" => connection.principal.kind.as_str())
            .increment(1.0);
        Ok((connection, receiver))
    }

    /// Forgets a connection that ended; answers the presence changes this causes.
    pub fn unregister(&self, connection: &Connection) -> Vec<PresenceChange> {
        let rooms = connection.rooms();
        let mut state = self.write();
        if state.connections.remove(&connection.id).is_none() {
            return Vec::new();
        }
        metrics::gauge!("ws_connections", "kind" => connection.principal.kind.as_str())
            .decrement(1.0);
        if let Some(ip) = connection.ip {
            decrement(&mut state.per_ip, ip);
        }
        decrement(&mut state.per_user, connection.principal.user_id);
        let user = connection.principal.user_id;
        let mut changes = Vec::new();
        for room in rooms {
            let before = state.presence_of(room, user);
            remove_subscriber(&mut state, room, connection.id);
            let after = state.presence_of(room, user);
            changes.extend(PresenceChange::between(room, user, before, after));
        }
        changes
    }

    /// Starts delivering `room`'s events to the connection. Answers the room's presence list
    /// and whether the person's presence in the room changed.
    pub fn subscribe(
        &self,
        connection: &Arc<Connection>,
        room: i64,
    ) -> (Vec<(i64, Presence)>, Option<PresenceChange>) {
        let user = connection.principal.user_id;
        let mut state = self.write();
        let before = state.presence_of(room, user);
        state
            .rooms
            .entry(room)
            .or_default()
            .insert(connection.id, connection.clone());
        if let Ok(mut rooms) = connection.rooms.lock() {
            rooms.insert(room);
        }
        let after = state.presence_of(room, user);
        let mut present: HashMap<i64, Presence> = HashMap::new();
        for subscriber in state.rooms.get(&room).into_iter().flat_map(|s| s.values()) {
            let entry = present
                .entry(subscriber.principal.user_id)
                .or_insert(Presence::Offline);
            *entry = (*entry).max(subscriber.presence());
        }
        let remote = self.remote();
        for ((entry_room, entry_user), (_, nodes)) in &remote.entries {
            if *entry_room != room {
                continue;
            }
            if let Some(best) = nodes.values().max() {
                let entry = present.entry(*entry_user).or_insert(Presence::Offline);
                *entry = (*entry).max(*best);
            }
        }
        drop(remote);
        let mut present: Vec<(i64, Presence)> = present
            .into_iter()
            .filter(|(_, state)| *state != Presence::Offline)
            .collect();
        present.sort_unstable();
        let change = PresenceChange::between(room, user, before, after);
        (present, change)
    }

    /// Stops delivering `room`'s events to the connection.
    pub fn unsubscribe(&self, connection: &Connection, room: i64) -> Option<PresenceChange> {
        let user = connection.principal.user_id;
        let mut state = self.write();
        let before = state.presence_of(room, user);
        remove_subscriber(&mut state, room, connection.id);
        if let Ok(mut rooms) = connection.rooms.lock() {
            rooms.remove(&room);
        }
        let after = state.presence_of(room, user);
        PresenceChange::between(room, user, before, after)
    }

    /// Sets the connection's presence; answers the rooms where the person's presence changed.
    pub fn set_presence(&self, connection: &Connection, presence: Presence) -> Vec<PresenceChange> {
        let user = connection.principal.user_id;
        let state = self.write();
        let rooms = connection.rooms();
        let before: Vec<Presence> = rooms
            .iter()
            .map(|room| state.presence_of(*room, user))
            .collect();
        connection.presence.store(presence as u8, Ordering::Relaxed);
        rooms
            .into_iter()
            .zip(before)
            .filter_map(|(room, before)| {
                let after = state.presence_of(room, user);
                PresenceChange::between(room, user, before, after)
            })
            .collect()
    }

    /// Queues `outbound` for every connection following `room`. Never waits: a connection
    /// whose queue is full is closed as a slow consumer.
    pub fn publish(&self, room: i64, outbound: Outbound) -> usize {
        let state = self.read();
        let Some(subscribers) = state.rooms.get(&room) else {
            return 0;
        };
        let mut delivered = 0;
        for connection in subscribers.values() {
            match connection.queue.try_send(outbound.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !connection.closing.is_cancelled() {
                        metrics::counter!("ws_slow_consumers_total").increment(1);
                        connection.close(close::SLOW_CONSUMER);
                    }
                }
                // The connection is ending; `unregister` will remove it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Publishes a frame to `room`.
    pub fn publish_frame(&self, room: i64, json: ByteString) -> usize {
        self.publish(
            room,
            Outbound::Frame(Arc::new(Frame {
                room,
                new_message: None,
                json,
            })),
        )
    }

    /// Tells `user_id`'s connections following `room`, on every node, to check that they
    /// still may.
    pub fn recheck(&self, room: i64, user_id: i64) {
        self.recheck_here(room, user_id);
        self.forward(Wire::Recheck {
            n: self.inner.node,
            r: room,
            u: Some(user_id),
        });
    }

    /// [`Hub::recheck`] on this node only.
    pub fn recheck_here(&self, room: i64, user_id: i64) {
        self.recheck_where(room, |c| c.principal.user_id == user_id);
    }

    /// Tells every connection following `room`, on every node, to check that they still may
    /// (the room was deleted).
    pub fn recheck_all(&self, room: i64) {
        self.recheck_all_here(room);
        self.forward(Wire::Recheck {
            n: self.inner.node,
            r: room,
            u: None,
        });
    }

    /// [`Hub::recheck_all`] on this node only.
    pub fn recheck_all_here(&self, room: i64) {
        self.recheck_where(room, |_| true);
    }

    fn recheck_where(&self, room: i64, which: impl Fn(&Connection) -> bool) {
        let state = self.read();
        for connection in state
            .rooms
            .get(&room)
            .into_iter()
            .flat_map(|s| s.values())
            .filter(|c| which(c))
        {
            if connection.queue.try_send(Outbound::Recheck(room)).is_err() {
                connection.close(close::SLOW_CONSUMER);
            }
        }
    }

    /// The lock that orders `room`'s events: hold it from storing a message until its event
    /// is published.
    pub async fn order(&self, room: i64) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = usize::try_from(room.rem_euclid(ORDER_STRIPES as i64)).unwrap_or(0);
        self.inner.order[stripe].lock().await
    }

    /// Closes every connection for which `which` is true; answers how many.
    pub fn close_where(&self, code: u16, which: impl Fn(&Connection) -> bool) -> usize {
        let state = self.read();
        let mut closed = 0;
        for connection in state.connections.values().filter(|c| which(c)) {
            connection.close(code);
            closed += 1;
        }
        closed
    }

    /// Closes one connection (admin); false when there is none with that id.
    pub fn disconnect(&self, id: u64) -> bool {
        self.close_where(close::DISCONNECTED, |c| c.id == id) > 0
    }

    /// Refuses new connections and tells every open one to reconnect elsewhere (1012).
    pub fn shut_down(&self) -> usize {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.close_where(close::RESTARTING, |_| true)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Open connections on this node.
    pub fn len(&self) -> usize {
        self.read().connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let state = self.read();
        let mut list: Vec<ConnectionInfo> = state
            .connections
            .values()
            .map(|c| ConnectionInfo {
                id: c.id,
                kind: c.principal.kind,
                user_id: c.principal.user_id,
                name: c.principal.name.clone(),
                ip: c.ip.map(|ip| ip.to_string()),
                since: c.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                presence: c.presence(),
                rooms: c.rooms(),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

fn remove_subscriber(state: &mut State, room: i64, connection: u64) {
    if let Some(subscribers) = state.rooms.get_mut(&room) {
        subscribers.remove(&connection);
        if subscribers.is_empty() {
            state.rooms.remove(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_is_small() {
        assert_eq!(std::mem::size_of::<Outbound>(), 16);
    }

    fn principal(user_id: i64) -> Principal {
        Principal {
            kind: ConnectionKind::Token,
            user_id,
            name: format!("user {user_id}"),
            session_id: None,
            token_id: Some(user_id),
            may_write: true,
        }
    }

    fn hub(queue_capacity: usize) -> Hub {
        Hub::new(&RealtimeSettings {
            queue_capacity,
            connections_per_user: 2,
            connections_per_ip: 3,
            ..RealtimeSettings::default()
        })
    }

    #[test]
    fn a_full_queue_closes_only_the_slow_connection() {
        let hub = hub(2);
        let (slow, _slow_queue) = hub.register(principal(1), None).expect("registered");
        let (fast, mut fast_queue) = hub.register(principal(2), None).expect("registered");
        hub.subscribe(&slow, 7);
        hub.subscribe(&fast, 7);
        for n in 0..5 {
            hub.publish_frame(7, ByteString::from(format!("{n}")));
            while fast_queue.try_recv().is_ok() {}
        }
        assert_eq!(slow.close_code(), close::SLOW_CONSUMER);
        assert_eq!(fast.close_code(), 0, "the reader that keeps up stays");
    }

    #[test]
    fn presence_is_the_best_state_of_a_persons_connections() {
        let hub = hub(8);
        let (tab1, _q1) = hub.register(principal(1), None).expect("registered");
        let (tab2, _q2) = hub.register(principal(1), None).expect("registered");
        let (_, first) = hub.subscribe(&tab1, 3);
        assert_eq!(first.map(|c| c.state), Some(Presence::Online));
        let (present, second) = hub.subscribe(&tab2, 3);
        assert_eq!(second, None, "a second tab changes nothing");
        assert_eq!(present, vec![(1, Presence::Online)]);
        assert!(hub.set_presence(&tab1, Presence::Away).is_empty());
        let changes = hub.set_presence(&tab2, Presence::Away);
        assert_eq!(changes[0].state, Presence::Away, "away once every tab is");
        assert!(hub.unregister(&tab1).is_empty());
        assert_eq!(hub.unregister(&tab2)[0].state, Presence::Offline);
        assert!(hub.is_empty());
    }

    #[test]
    fn limits_count_open_connections() {
        let hub = hub(8);
        let ip: Option<IpAddr> = Some([127, 0, 0, 9].into());
        let (first, _q1) = hub.register(principal(1), ip).expect("first");
        let (_second, _q2) = hub.register(principal(1), ip).expect("second");
        assert_eq!(
            hub.register(principal(1), ip).err(),
            Some(Refusal::TooManyForUser)
        );
        let (_third, _q3) = hub.register(principal(2), ip).expect("another person");
        assert_eq!(
            hub.register(principal(3), ip).err(),
            Some(Refusal::TooManyForIp)
        );
        hub.unregister(&first);
        assert!(hub.register(principal(1), ip).is_ok(), "a slot came free");
        assert_eq!(hub.shut_down(), 3);
        assert_eq!(hub.check_handshake(ip), Err(Refusal::ShuttingDown));
    }
}
