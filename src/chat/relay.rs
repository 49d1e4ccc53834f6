//! Several nodes on one PostgreSQL database: hub events travel between them over
//! LISTEN/NOTIFY on the channel [`CHANNEL`].
//!
//! - Payloads are small JSON objects ([`Wire`]): ids and states, never message bodies. A node
//!   that hears of a new or edited message reads it from the history, once, and publishes it to
//!   its own followers.
//! - Message changes are announced by the history store *inside* the writing transaction
//!   ([`change_hook`]): PostgreSQL delivers notifications at commit, in commit order, so every
//!   node sees a room's messages in id order, like the node that stored them.
//! - Everything else (typing, read markers, presence, membership re-checks, revoked sessions and
//!   tokens) is sent by the relay thread as it happens.
//! - Presence: each node announces its own state per room and person; others combine it with
//!   theirs. Nodes send a heartbeat every [`HEARTBEAT`]; what a node silent for [`NODE_TIMEOUT`]
//!   reported is forgotten (it crashed), and a node that stops says goodbye first.
//!
//! The listening connection is a plain diesel `PgConnection` (libpq: the same URL, TLS and
//! authentication handling as the pool). diesel exposes notifications only by polling
//! (`PQconsumeInput` + `PQnotifies`), not the socket to wait on, so the relay thread polls every
//! [`POLL`]: one non-blocking `recv` per poll, a few hundred a second, which costs far less
//! than a core's thousandth and bounds the added latency to the poll interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::hub::{Hub, Presence, close};
use super::rooms::ChatService;
use crate::auth::sessions::{Revocation, Sessions};
use crate::db::DbConnection;
use crate::history::{Change, ChangeHook};

/// The PostgreSQL notification channel of hub events.
pub const CHANNEL: &str = "conclave_hub";
const POLL: Duration = Duration::from_millis(5);
const HEARTBEAT: Duration = Duration::from_secs(5);
const NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest NOTIFY payload PostgreSQL takes is 8000 bytes; names are cut to stay far below.
const MAX_NAME_BYTES: usize = 200;

/// One event between nodes. `n` is the sending node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Wire {
    #[serde(rename = "m")]
    Posted { n: u64, r: i64, i: i64 },
    #[serde(rename = "e")]
    Edited { n: u64, r: i64, i: i64 },
    #[serde(rename = "d")]
    Deleted { n: u64, r: i64, i: i64 },
    #[serde(rename = "t")]
    Typing {
        n: u64,
        r: i64,
        u: i64,
        name: String,
    },
    #[serde(rename = "rd")]
    Read { n: u64, r: i64, u: i64, i: i64 },
    /// The sending node's presence for person `u` in room `r`.
    #[serde(rename = "p")]
    Presence {
        n: u64,
        r: i64,
        u: i64,
        name: String,
        s: Presence,
    },
    /// Re-check membership: person `u`'s connections, or everyone's when `u` is null.
    #[serde(rename = "rc")]
    Recheck { n: u64, r: i64, u: Option<i64> },
    #[serde(rename = "rv")]
    Revoked { n: u64, what: Revocation },
    #[serde(rename = "hb")]
    Alive { n: u64 },
    /// A node started: the others send it their presence.
    #[serde(rename = "hi")]
    Hello { n: u64 },
    #[serde(rename = "by")]
    Bye { n: u64 },
    /// A ready frame for room `r`'s followers (the assistant's streamed pieces, which exist
    /// nowhere else to be read back). Its sender keeps it under [`MAX_FRAME_BYTES`].
    #[serde(rename = "f")]
    Frame { n: u64, r: i64, f: String },
    /// Device `d`'s connections: close them, or look for what waits for them.
    #[serde(rename = "dv")]
    Device {
        n: u64,
        d: i64,
        s: crate::devices::gateway::Signal,
    },
}

/// Largest frame a [`Wire::Frame`] carries: PostgreSQL refuses NOTIFY payloads of 8000 bytes
/// or more, and JSON-in-JSON escaping can nearly double a frame.
pub const MAX_FRAME_BYTES: usize = 3_500;

impl Wire {
    fn node(&self) -> u64 {
        match self {
            Self::Posted { n, .. }
            | Self::Edited { n, .. }
            | Self::Deleted { n, .. }
            | Self::Typing { n, .. }
            | Self::Read { n, .. }
            | Self::Presence { n, .. }
            | Self::Recheck { n, .. }
            | Self::Revoked { n, .. }
            | Self::Alive { n }
            | Self::Hello { n }
            | Self::Bye { n }
            | Self::Frame { n, .. }
            | Self::Device { n, .. } => *n,
        }
    }
}

fn notify(conn: &mut PgConnection, mut wire: Wire) -> QueryResult<()> {
    if let Wire::Typing { name, .. } | Wire::Presence { name, .. } = &mut wire {
        let mut end = name.len().min(MAX_NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    let payload = serde_json::to_string(&wire).unwrap_or_default();
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(payload)
        .execute(conn)?;
    Ok(())
}

/// The history store's hook on PostgreSQL: announces each message change in its transaction.
pub fn change_hook(node: u64) -> ChangeHook {
    Arc::new(move |conn: &mut DbConnection, change: Change| {
        let DbConnection::Postgresql(pg) = conn else {
            return Ok(());
        };
        let wire = match change {
            Change::Posted { room, id } => Wire::Posted {
                n: node,
                r: room,
                i: id,
            },
            Change::Edited { room, id } => Wire::Edited {
                n: node,
                r: room,
                i: id,
            },
            Change::Deleted { room, id } => Wire::Deleted {
                n: node,
                r: room,
                i: id,
            },
        };
        notify(pg, wire)
    })
}

/// Closes this node's connections that used revoked credentials.
pub fn close_revoked(hub: &Hub, revocation: &Revocation) {
    match revocation {
        Revocation::Session(id) => {
            hub.close_where(close::SIGNED_OUT, |c| {
                c.principal.session_id.as_deref() == Some(id.as_str())
            });
        }
        Revocation::Token(id) => {
            hub.close_where(close::SIGNED_OUT, |c| c.principal.token_id == Some(*id));
        }
        Revocation::TokensOf(user) => {
            hub.close_where(close::SIGNED_OUT, |c| {
                c.principal.token_id.is_some() && c.principal.user_id == *user
            });
        }
    }
}

/// Closes connections as soon as their credentials are revoked on this node, and (with a
/// relay) tells the other nodes.
pub fn watch_revocations(hub: Hub, sessions: &Sessions) {
    let mut revocations = sessions.revocations();
    tokio::spawn(async move {
        loop {
            match revocations.recv().await {
                Ok(revocation) => {
                    close_revoked(&hub, &revocation);
                    hub.forward(Wire::Revoked {
                        n: hub.node(),
                        what: revocation,
                    });
                }
                // Missed some: the connections' periodic re-check catches them.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// A running relay; dropping it does not stop it, [`Relay::stop`] does.
pub struct Relay {
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying for `hub` over the database at `url`.
    pub fn start(
        url: String,
        hub: Hub,
        chat: ChatService,
        sessions: Sessions,
        devices: crate::devices::gateway::Live,
    ) -> Self {
        let (outgoing, outbox) = mpsc::unbounded_channel();
        hub.attach_relay(outgoing);
        let (incoming, inbox) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(inbox, hub.clone(), chat, sessions, devices));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("conclave-relay".to_owned())
            .spawn({
                let stopping = stopping.clone();
                move || listen(&url, &hub, outbox, incoming, &stopping)
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start the cluster relay thread"))
            .ok();
        Self { stopping, thread }
    }

    /// Says goodbye to the other nodes and stops (within a second).
    pub async fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The relay thread: connects, listens, sends what the node forwards, hands what it hears to
/// the dispatcher. Reconnects with backoff when the database goes away.
fn listen(
    url: &str,
    hub: &Hub,
    mut outbox: mpsc::UnboundedReceiver<Wire>,
    incoming: mpsc::UnboundedSender<Wire>,
    stopping: &AtomicBool,
) {
    let node = hub.node();
    let mut backoff = Duration::from_millis(200);
    let mut connected_before = false;
    while !stopping.load(Ordering::SeqCst) {
        let mut conn = match connect(url) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "cluster relay cannot reach the database; retrying");
                // Typing and presence from before the outage are stale by the time it ends.
                while outbox.try_recv().is_ok() {}
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if connected_before {
            // Events of other nodes may have been missed while the relay was away: clients
            // following rooms reconnect and resume from their last message (1012).
            let told = hub.close_where(close::RESTARTING, |c| !c.rooms().is_empty());
            tracing::warn!(connections = told, "cluster relay is back; clients resume");
        }
        connected_before = true;
        // A node that was away may have missed presence: ask everyone again...
        if let Err(e) = notify(&mut conn, Wire::Hello { n: node }) {
            tracing::warn!(error = %e, "cluster relay lost the database");
            continue;
        }
        // ... and tell them this node's own (the dispatcher forwards it).
        let _ = incoming.send(Wire::Hello { n: node });
        let mut last_heartbeat = Instant::now();
        match relay(
            &mut conn,
            node,
            &mut outbox,
            &incoming,
            stopping,
            &mut last_heartbeat,
        ) {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(error = %e, "cluster relay lost the database; reconnecting");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn connect(url: &str) -> Result<PgConnection, diesel::result::Error> {
    let mut conn = PgConnection::establish(url).map_err(|e| {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UnableToSendCommand,
            Box::new(e.to_string()),
        )
    })?;
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn)?;
    Ok(conn)
}

fn relay(
    conn: &mut PgConnection,
    node: u64,
    outbox: &mut mpsc::UnboundedReceiver<Wire>,
    incoming: &mpsc::UnboundedSender<Wire>,
    stopping: &AtomicBool,
    last_heartbeat: &mut Instant,
) -> QueryResult<()> {
    loop {
        if stopping.load(Ordering::SeqCst) {
            while let Ok(wire) = outbox.try_recv() {
                notify(conn, wire)?;
            }
            return notify(conn, Wire::Bye { n: node });
        }
        while let Ok(wire) = outbox.try_recv() {
            notify(conn, wire)?;
        }
        if last_heartbeat.elapsed() >= HEARTBEAT {
            notify(conn, Wire::Alive { n: node })?;
            *last_heartbeat = Instant::now();
        }
        for notification in conn.notifications_iter() {
            let notification = notification?;
            match serde_json::from_str::<Wire>(&notification.payload) {
                Ok(wire) if wire.node() != node => {
                    let _ = incoming.send(wire);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable cluster event ignored"),
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Applies what other nodes said, one event at a time, so a room's events keep their order.
async fn dispatch(
    mut inbox: mpsc::UnboundedReceiver<Wire>,
    hub: Hub,
    chat: ChatService,
    sessions: Sessions,
    devices: crate::devices::gateway::Live,
) {
    let mut heard: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut sweep = tokio::time::interval(HEARTBEAT);
    loop {
        let wire = tokio::select! {
            wire = inbox.recv() => match wire {
                Some(wire) => wire,
                None => return,
            },
            _ = sweep.tick() => {
                let silent: Vec<u64> = heard
                    .iter()
                    .filter(|(_, at)| at.elapsed() > NODE_TIMEOUT)
                    .map(|(node, _)| *node)
                    .collect();
                for node in silent {
                    tracing::warn!(node, "a node went silent; forgetting its presence");
                    heard.remove(&node);
                    hub.forget_node(node);
                }
                continue;
            }
        };
        let from = wire.node();
        if from != hub.node() {
            heard.insert(from, Instant::now());
        }
        match wire {
            Wire::Posted { r, i, .. } | Wire::Edited { r, i, .. } if hub.has_followers(r) => {
                let edited = matches!(wire, Wire::Edited { .. });
                let _order = hub.order(r).await;
                match chat.stored_view(r, i).await {
                    Ok(Some(view)) if edited => chat.publish_edited(&view),
                    Ok(Some(view)) => chat.publish_new(&view),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, room = r, "cannot read a relayed message"),
                }
            }
            Wire::Posted { .. } | Wire::Edited { .. } => {}
            Wire::Deleted { r, i, .. } => {
                let _order = hub.order(r).await;
                hub.publish_frame(r, super::protocol::message_deleted(r, i).into());
            }
            Wire::Typing { r, u, name, .. } => {
                hub.publish_frame(r, super::protocol::typing(r, u, &name).into());
            }
            Wire::Read { r, u, i, .. } => {
                hub.publish_frame(r, super::protocol::read(r, u, i, None).into());
            }
            Wire::Frame { r, f, .. } => {
                hub.publish_frame(r, f.into());
            }
            Wire::Presence { n, r, u, name, s } => hub.remote_presence(n, r, u, &name, s),
            Wire::Recheck { r, u: Some(u), .. } => hub.recheck_here(r, u),
            Wire::Recheck { r, u: None, .. } => hub.recheck_all_here(r),
            Wire::Revoked { what, .. } => {
                if let Revocation::Session(id) = &what {
                    sessions.forget_cached(id).await;
                }
                close_revoked(&hub, &what);
            }
            Wire::Device { d, s, .. } => {
                devices.apply(d, s);
            }
            Wire::Alive { .. } => {}
            // Another node started (or this one reconnected): it needs this node's presence.
            Wire::Hello { .. } => {
                for (room, user, name, state) in hub.local_presence() {
                    hub.forward(Wire::Presence {
                        n: hub.node(),
                        r: room,
                        u: user,
                        name,
                        s: state,
                    });
                }
            }
            Wire::Bye { n } => {
                heard.remove(&n);
                hub.forget_node(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_small_and_round_trip() {
        let wire = Wire::Presence {
            n: 7,
            r: 1,
            u: 2,
            name: "Ada".to_owned(),
            s: Presence::Away,
        };
        let text = serde_json::to_string(&wire).expect("serializes");
        assert_eq!(
            text,
            r#"{"k":"p","n":7,"r":1,"u":2,"name":"Ada","s":"away"}"#
        );
        assert_eq!(serde_json::from_str::<Wire>(&text).expect("parses"), wire);
        let revoked = Wire::Revoked {
            n: 1,
            what: Revocation::Session("ab".to_owned()),
        };
        let text = serde_json::to_string(&revoked).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Wire>(&text).expect("parses"),
            revoked
        );
    }
}
