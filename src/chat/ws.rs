//! `GET /api/v1/ws`: the realtime endpoint (protocol `conclave.v1`, docs/protocol.md), and the
//! admin API over live connections.
//!
//! Before the upgrade: the handshake rate per IP, then the credentials (the session cookie,
//! whose `Origin` must be ours, or an API token in `Sec-WebSocket-Protocol: conclave.v1,
//! bearer.<token>` or `Authorization: Bearer`), then the connection limits. A refusal is an
//! ordinary HTTP answer (401, 403, 429, 503), never an upgrade that closes at once.
//!
//! After it, one task per connection reads the client's frames, drains the connection's hub
//! queue into the socket, pings, and re-checks the credentials. Every state change goes through
//! [`ChatService`], which publishes it to the hub, so HTTP, pages and WebSocket clients all
//! see the same events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use governor::{Quota, RateLimiter};
use serde_json::json;
use tokio::time::Instant;

use super::RoomAction;
use super::hub::{
    Connection, ConnectionKind, Hub, Outbound, PresenceChange, Principal, Refusal, close,
};
use super::protocol::{self, ClientFrame};
use super::rooms::ChatService;
use crate::error::AppError;
use crate::history::Cursor;
use crate::tenancy::Authorizer;
use crate::web::{AppState, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/api/v1/ws").get(connect))
        .service(resource("/api/v1/admin/connections").get(list_connections))
        .service(resource("/api/v1/admin/connections/{id}").delete(disconnect));
}

/// Replayed history is read in pages of this many messages.
const REPLAY_PAGE: usize = 200;

fn refused(refusal: Refusal) -> AppError {
    metrics::counter!("ws_refusals_total", "reason" => refusal.as_str()).increment(1);
    match refusal {
        Refusal::ShuttingDown => {
            AppError::Unavailable("This server is restarting; connect again.".to_owned())
        }
        Refusal::HandshakeRate => AppError::Coded {
            status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            code: "handshake_rate",
            message: "Too many new connections from your address; wait a moment.".to_owned(),
            retry_after_secs: Some(10),
        },
        Refusal::TooManyForIp => AppError::Coded {
            status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_connections",
            message: "Too many open connections from your address.".to_owned(),
            retry_after_secs: Some(30),
        },
        Refusal::TooManyForUser => AppError::Coded {
            status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_connections",
            message: "You have too many open connections; close some tabs or scripts.".to_owned(),
            retry_after_secs: Some(30),
        },
    }
}

/// The subprotocols a client offered, in order.
fn offered_protocols(request: &HttpRequest) -> Vec<String> {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// True when a browser at `origin` may use its session cookie here.
fn origin_allowed(state: &AppState, request: &HttpRequest, origin: &str) -> bool {
    crate::web::csrf::same_site(origin, state, request.headers())
        || state
            .settings
            .realtime
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/') == origin)
}

async fn authenticate(
    state: &AppState,
    request: &HttpRequest,
    token: Option<String>,
) -> Result<Principal, AppError> {
    if let Some(presented) = token {
        let identity = crate::auth::identity::resolve_token(state, request, presented).await?;
        return Ok(Principal {
            kind: ConnectionKind::Token,
            user_id: identity.user_id,
            name: identity.display_name,
            session_id: None,
            token_id: Some(identity.token_id),
            may_write: identity.scopes.iter().any(|s| s == "write"),
        });
    }
    let identity = crate::auth::identity::resolve(request)
        .await?
        .ok_or_else(|| {
            AppError::Unauthenticated(
                "Sign in first, or send an API token as `Sec-WebSocket-Protocol: conclave.v1, \
                 bearer.<token>`."
                    .to_owned(),
            )
        })?;
    // Cross-site WebSocket hijacking: browsers always send Origin on WebSocket handshakes
    // and attach cookies whatever page opened the socket, so the cookie counts only from
    // our own pages.
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    match origin {
        Some(origin) if origin_allowed(state, request, origin) => {}
        _ => {
            metrics::counter!("ws_refusals_total", "reason" => "origin").increment(1);
            return Err(AppError::Forbidden(
                "Cross-site WebSocket refused: this origin may not use your session.".to_owned(),
            ));
        }
    }
    Ok(Principal {
        kind: ConnectionKind::Browser,
        user_id: identity.session.user_id,
        name: identity.session.display_name.clone(),
        session_id: Some(identity.session.id.clone()),
        token_id: None,
        may_write: true,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "realtime",
    summary = "Open the realtime WebSocket (protocol conclave.v1, see docs/protocol.md)",
    description = "Browsers connect with their session cookie from a page of this site; scripts \
        send `Sec-WebSocket-Protocol: conclave.v1, bearer.<API token>` (the answer names only \
        `conclave.v1`) or `Authorization: Bearer <API token>`.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake, or an unsupported subprotocol", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session or token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "A session cookie sent from another site's page", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many connections or handshakes", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The server is shutting down", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn connect(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let hub = state.chat.hub().clone();
    let ip = crate::web::client_addr(&request);
    hub.check_handshake(ip).map_err(refused)?;
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Err(AppError::BadRequest(
            "This endpoint speaks WebSocket: send an upgrade request (docs/protocol.md)."
                .to_owned(),
        ));
    }
    let offered = offered_protocols(&request);
    let bearer = offered
        .iter()
        .find_map(|p| p.strip_prefix("bearer."))
        .map(str::to_owned);
    let header_token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    // Devices (a `cnd_` token) speak their own messages on this endpoint.
    if let Some(token) = bearer
        .as_deref()
        .or(header_token.as_deref())
        .filter(|t| t.starts_with(crate::devices::TOKEN_PREFIX))
    {
        let token = token.to_owned();
        return crate::devices::gateway::connect(state, request, payload, &token, &offered).await;
    }
    let versions: Vec<&String> = offered
        .iter()
        .filter(|p| !p.starts_with("bearer."))
        .collect();
    if !versions.is_empty() && !versions.iter().any(|p| *p == protocol::PROTOCOL) {
        return Err(AppError::BadRequest(format!(
            "Sec-WebSocket-Protocol: this server speaks {}",
            protocol::PROTOCOL
        )));
    }
    let principal = authenticate(&state, &request, bearer.or(header_token)).await?;
    let (connection, queue) = hub.register(principal, ip).map_err(refused)?;
    let (response, session, stream) =
        match actix_ws::handle_with_protocols(&request, payload, &[protocol::PROTOCOL]) {
            Ok(parts) => parts,
            Err(e) => {
                hub.unregister(&connection);
                return Err(AppError::BadRequest(format!(
                    "This endpoint speaks WebSocket: {e}"
                )));
            }
        };
    let settings = hub.settings();
    let stream = stream
        .max_frame_size(settings.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(settings.max_frame_bytes);
    let live = Live {
        chat: state.chat.clone(),
        sessions: state.sessions.clone(),
        db: state.db.clone(),
        hub,
        connection,
        session,
        following: HashMap::new(),
    };
    actix_web::rt::spawn(live.run(queue, stream));
    Ok(response)
}

/// Why the loop ended, and who closes.
enum End {
    /// The server closes with this code.
    Close(u16),
    /// The client closed (its code, echoed back).
    ClientClosed(Option<CloseReason>),
    /// The socket is gone.
    Gone,
}

/// One live connection's task.
struct Live {
    chat: ChatService,
    sessions: crate::auth::sessions::Sessions,
    db: crate::db::Db,
    hub: Hub,
    connection: Arc<Connection>,
    session: actix_ws::Session,
    /// Rooms followed, each with the newest message id already sent from history: live
    /// `message` events up to it are duplicates of what resume sent.
    following: HashMap<i64, i64>,
}

impl Live {
    async fn run(
        mut self,
        mut queue: tokio::sync::mpsc::Receiver<Outbound>,
        mut stream: actix_ws::AggregatedMessageStream,
    ) {
        let settings = self.hub.settings();
        let per_second = std::num::NonZeroU32::new(settings.messages_per_second)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            std::num::NonZeroU32::new(settings.message_burst).unwrap_or(std::num::NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst));
        let heartbeat_every = Duration::from_secs(settings.heartbeat_secs);
        let heartbeat_timeout = Duration::from_secs(settings.heartbeat_timeout_secs);
        let revalidate_every = Duration::from_secs(settings.revalidate_secs);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut revalidate =
            tokio::time::interval_at(Instant::now() + revalidate_every, revalidate_every);
        revalidate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let principal = &self.connection.principal;
        let hello = protocol::hello(
            self.connection.id,
            principal.user_id,
            &principal.name,
            settings.heartbeat_secs,
        );
        let connection = self.connection.clone();
        let end = if self.send(hello).await.is_err() {
            End::Gone
        } else {
            loop {
                // Not biased: a busy room must not starve the client's frames, nor the reverse.
                tokio::select! {
                    () = connection.closing() => break End::Close(connection.close_code()),
                    frame = stream.recv() => {
                        let message = match frame {
                            None => break End::Gone,
                            Some(Err(ProtocolError::Overflow)) => break End::Close(close::TOO_BIG),
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "websocket protocol error");
                                break End::Gone;
                            }
                            Some(Ok(message)) => message,
                        };
                        last_heard = Instant::now();
                        match message {
                            AggregatedMessage::Text(text) => {
                                metrics::counter!("ws_frames_received_total").increment(1);
                                if limiter.check().is_err() {
                                    break End::Close(close::RATE_LIMITED);
                                }
                                // Boxed, here and below: the futures of the work a frame asks for
                                // are large, and inline they would make every idle connection's
                                // task as large as the largest of them.
                                if let Err(end) = Box::pin(self.handle(&text)).await {
                                    break end;
                                }
                            }
                            AggregatedMessage::Binary(_) => break End::Close(close::UNSUPPORTED_DATA),
                            AggregatedMessage::Ping(bytes) => {
                                if self.session.pong(&bytes).await.is_err() {
                                    break End::Gone;
                                }
                            }
                            AggregatedMessage::Pong(_) => {}
                            AggregatedMessage::Close(reason) => break End::ClientClosed(reason),
                        }
                    }
                    outbound = queue.recv() => {
                        let Some(outbound) = outbound else { break End::Close(close::INTERNAL) };
                        if let Err(end) = Box::pin(self.deliver(outbound)).await {
                            break end;
                        }
                    }
                    _ = heartbeat.tick() => {
                        if last_heard.elapsed() >= heartbeat_timeout {
                            break End::Close(close::HEARTBEAT_TIMEOUT);
                        }
                        if let Err(end) = self.ping().await {
                            break end;
                        }
                    }
                    _ = revalidate.tick() => {
                        match Box::pin(self.still_signed_in()).await {
                            Ok(true) => {}
                            Ok(false) => break End::Close(close::SIGNED_OUT),
                            // A database hiccup is not a reason to drop everyone.
                            Err(e) => tracing::warn!(error = %e, "could not re-check a connection's credentials"),
                        }
                    }
                }
            }
        };
        // A client that stopped reading cannot take a close frame either: give up after a
        // moment and drop the socket (the task ending closes the TCP connection).
        let closing = |reason| {
            tokio::time::timeout(Duration::from_secs(2), self.session.clone().close(reason))
        };
        let code = match end {
            End::Close(code) => {
                // actix-ws ends the socket right after the close frame, so there is no closing
                // handshake to wait for.
                let _ = closing(Some(CloseReason {
                    code: CloseCode::from(code),
                    description: Some(close::reason(code).to_owned()),
                }))
                .await;
                code
            }
            End::ClientClosed(reason) => {
                let code = reason.as_ref().map_or(close::NORMAL, |r| u16::from(r.code));
                let _ = closing(reason).await;
                code
            }
            // "Abnormal closure": the socket went away without a close frame.
            End::Gone => 1006,
        };
        metrics::counter!("ws_closes_total", "code" => code.to_string()).increment(1);
        let changes = self.hub.unregister(&self.connection);
        self.announce_presence(changes);
    }

    /// Sends a text frame. Waits while the socket is backed up, but not past the server's
    /// decision to close this connection (a slow consumer must not hold its task forever).
    async fn send(&mut self, text: impl Into<bytestring::ByteString>) -> Result<(), End> {
        metrics::counter!("ws_frames_sent_total").increment(1);
        let Self {
            session,
            connection,
            ..
        } = self;
        tokio::select! {
            sent = session.text(text) => sent.map_err(|_| End::Gone),
            () = connection.closing() => Err(End::Close(connection.close_code())),
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        let Self {
            session,
            connection,
            ..
        } = self;
        tokio::select! {
            sent = session.ping(b"") => sent.map_err(|_| End::Gone),
            () = connection.closing() => Err(End::Close(connection.close_code())),
        }
    }

    /// Sends a queued event, unless resume already sent that message.
    async fn deliver(&mut self, outbound: Outbound) -> Result<(), End> {
        match outbound {
            Outbound::Frame(frame) => {
                let Some(replayed_up_to) = self.following.get(&frame.room).copied() else {
                    // Queued just before an unsubscribe.
                    return Ok(());
                };
                if frame.new_message.is_some_and(|id| id <= replayed_up_to) {
                    return Ok(());
                }
                self.send(frame.json.clone()).await
            }
            Outbound::Recheck(room) => {
                if self.following.contains_key(&room)
                    && self
                        .chat
                        .access(self.connection.principal.user_id, room)
                        .await
                        .is_err()
                {
                    self.stop_following(room);
                    return self
                        .send(protocol::unsubscribed(room, "removed", None))
                        .await;
                }
                Ok(())
            }
        }
    }

    /// Whether the session or token this connection opened with still works.
    async fn still_signed_in(&self) -> Result<bool, AppError> {
        let principal = &self.connection.principal;
        if let Some(session) = &principal.session_id {
            return Ok(self.sessions.revalidate(session).await?.is_some());
        }
        if let Some(token) = principal.token_id {
            return self
                .db
                .run(move |conn| {
                    crate::auth::api_tokens::is_live(conn, token).map_err(AppError::from)
                })
                .await;
        }
        Ok(false)
    }

    fn stop_following(&mut self, room: i64) {
        self.following.remove(&room);
        if let Some(change) = self.hub.unsubscribe(&self.connection, room) {
            self.announce_presence(vec![change]);
        }
    }

    fn announce_presence(&self, changes: Vec<PresenceChange>) {
        self.hub
            .presence_changed(&changes, &self.connection.principal.name);
    }

    /// One client frame. Bad input gets an `error` frame; only a dead socket ends the loop.
    async fn handle(&mut self, text: &str) -> Result<(), End> {
        let frame = match protocol::parse(text) {
            Ok(frame) => frame,
            Err((code, message)) => return self.send(protocol::error(code, &message, None)).await,
        };
        let reference = frame.reference().map(str::to_owned);
        match self.act(frame).await {
            Ok(()) => Ok(()),
            Err(Failure::Socket(end)) => Err(end),
            Err(Failure::App(error)) => {
                if let AppError::Internal(cause) = &error {
                    tracing::error!(error = ?cause, "realtime request failed");
                }
                let message = error.public_detail();
                self.send(protocol::error(
                    error.code(),
                    &message,
                    reference.as_deref(),
                ))
                .await
            }
        }
    }

    async fn act(&mut self, frame: ClientFrame) -> Result<(), Failure> {
        let user = self.connection.principal.user_id;
        match frame {
            ClientFrame::Subscribe {
                room,
                since,
                reference,
            } => self.subscribe(room, since, reference.as_deref()).await,
            ClientFrame::Unsubscribe { room, reference } => {
                self.stop_following(room);
                Ok(self
                    .send(protocol::unsubscribed(
                        room,
                        "requested",
                        reference.as_deref(),
                    ))
                    .await?)
            }
            ClientFrame::Post {
                room,
                body,
                reply_to,
                idempotency_key,
                reference,
            } => {
                self.require_write()?;
                let (message, created) = self
                    .chat
                    .post(user, room, body, reply_to, idempotency_key)
                    .await?;
                Ok(self
                    .send(protocol::ack(&message, !created, reference.as_deref()))
                    .await?)
            }
            ClientFrame::Edit {
                room,
                message_id,
                body,
                reference,
            } => {
                self.require_write()?;
                let message = self.chat.edit(user, room, message_id, body).await?;
                Ok(self
                    .send(protocol::ack(&message, false, reference.as_deref()))
                    .await?)
            }
            ClientFrame::Delete {
                room,
                message_id,
                reference,
            } => {
                self.require_write()?;
                self.chat
                    .delete_message(user, room, message_id, None)
                    .await?;
                let tombstone = self.chat.message(user, room, message_id).await?;
                Ok(self
                    .send(protocol::ack(&tombstone, false, reference.as_deref()))
                    .await?)
            }
            ClientFrame::Typing { room } => {
                if !self.following.contains_key(&room) {
                    return Err(AppError::BadRequest(format!(
                        "room: subscribe to room {room} before typing in it"
                    ))
                    .into());
                }
                let access = self.chat.access(user, room).await?;
                if !Authorizer::room(&access, RoomAction::Post) {
                    return Err(
                        AppError::Forbidden("You cannot post in this room.".to_owned()).into(),
                    );
                }
                self.hub.typing(room, user, &self.connection.principal.name);
                Ok(())
            }
            ClientFrame::Presence { state } => {
                let changes = self.hub.set_presence(&self.connection, state.into());
                self.announce_presence(changes);
                Ok(())
            }
            ClientFrame::Read {
                room, message_id, ..
            } => {
                self.chat.mark_read(user, room, message_id).await?;
                Ok(())
            }
            ClientFrame::Ping { reference } => {
                Ok(self.send(protocol::pong(reference.as_deref())).await?)
            }
        }
    }

    fn require_write(&self) -> Result<(), AppError> {
        if self.connection.principal.may_write {
            Ok(())
        } else {
            Err(AppError::Coded {
                status: actix_web::http::StatusCode::FORBIDDEN,
                code: "insufficient_scope",
                message: "This token has only the read scope.".to_owned(),
                retry_after_secs: None,
            })
        }
    }

    /// Follows a room. With `since`: first every message after it (in pages), then the
    /// subscription, then once more what arrived meanwhile — so nothing falls between history
    /// and live events, and what both carry is sent once.
    async fn subscribe(
        &mut self,
        room: i64,
        since: Option<i64>,
        reference: Option<&str>,
    ) -> Result<(), Failure> {
        let user = self.connection.principal.user_id;
        // Access (and, for a private room, that it is unlocked) is checked once, before
        // anything is sent.
        let access = self.chat.access(user, room).await?;
        let newest = self.chat.newest_of(&access, user).await?;
        let mut replayed = 0;
        let mut cursor = match since {
            Some(since) if since < 0 => {
                return Err(AppError::BadRequest("since: must be a message id".to_owned()).into());
            }
            Some(since) => {
                // A client cannot have messages the room does not have yet (a restored
                // database, a confused client): what comes after the newest one is new to it.
                let since = since.min(newest.unwrap_or(0));
                let (count, last) = self.replay(&access, since).await?;
                replayed += count;
                last
            }
            None => newest.unwrap_or(0),
        };
        let (present, change) = self.hub.subscribe(&self.connection, room);
        // Registered before this read: a message stored from now on is either read here or
        // queued for the loop (or both, and `deliver` skips it).
        if since.is_some() {
            let (count, last) = self.replay(&access, cursor).await?;
            replayed += count;
            cursor = last;
        } else if let Some(last) = self.chat.newest_of(&access, user).await? {
            // Without `since` the client loads history itself; live events start after what
            // was stored when it subscribed.
            cursor = cursor.max(last);
        }
        self.following.insert(room, cursor);
        if let Some(change) = change {
            self.announce_presence(vec![change]);
        }
        let names = self
            .chat
            .display_names(present.iter().map(|(id, _)| *id).collect())
            .await?;
        let present: Vec<(i64, String, super::hub::Presence)> = present
            .into_iter()
            .map(|(id, state)| (id, names.get(&id).cloned().unwrap_or_default(), state))
            .collect();
        let read = self.chat.read_marker(user, room).await?;
        let last_id = (cursor > 0).then_some(cursor);
        Ok(self
            .send(protocol::subscribed(
                room, replayed, last_id, read, &present, reference,
            ))
            .await?)
    }

    /// Sends every message of the room after `after`; answers how many and the last id sent
    /// (or `after`).
    async fn replay(
        &mut self,
        access: &super::RoomAccess,
        after: i64,
    ) -> Result<(usize, i64), Failure> {
        let user = self.connection.principal.user_id;
        let mut cursor = after;
        let mut sent = 0;
        loop {
            let page = self
                .chat
                .history_of(access, user, Cursor::After(cursor), REPLAY_PAGE)
                .await?;
            let full = page.len() == REPLAY_PAGE;
            for message in page {
                cursor = cursor.max(message.id);
                sent += 1;
                self.send(protocol::message(&message, true)).await?;
            }
            if !full {
                return Ok((sent, cursor));
            }
        }
    }
}

/// Why a client frame was not carried out.
enum Failure {
    /// The client's request failed: it gets an `error` frame.
    App(AppError),
    /// The socket is gone.
    Socket(End),
}

impl From<AppError> for Failure {
    fn from(error: AppError) -> Self {
        Self::App(error)
    }
}

impl From<End> for Failure {
    fn from(end: End) -> Self {
        Self::Socket(end)
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/connections",
    tag = "realtime",
    summary = "Live WebSocket connections on this node (deployment admins)",
    responses(
        (status = 200, description = "`{connections: [{id, kind, user_id, name, ip, since, presence, rooms}]}`"),
        (status = 403, description = "Not an admin of the default workspace", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_connections(
    state: web::Data<AppState>,
    staff: crate::admin::Staff,
) -> Result<HttpResponse, AppError> {
    staff.require(crate::admin::Action::View)?;
    Ok(HttpResponse::Ok().json(json!({ "connections": state.chat.hub().connections() })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/connections/{id}",
    tag = "realtime",
    summary = "Close a live connection (close code 4010)",
    params(("id" = u64, Path)),
    responses(
        (status = 204, description = "Closed"),
        (status = 403, description = "Not an admin of the default workspace", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection on this node", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn disconnect(
    state: web::Data<AppState>,
    request: HttpRequest,
    staff: crate::admin::Staff,
    id: web::Path<u64>,
) -> Result<HttpResponse, AppError> {
    staff.require(crate::admin::Action::Operate)?;
    let id = id.into_inner();
    let target = state
        .chat
        .hub()
        .connections()
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| AppError::NotFound("No such connection on this node.".to_owned()))?;
    state.chat.hub().disconnect(id);
    crate::audit::record_now(
        &state.db,
        crate::audit::AuditEvent {
            event: "connection.disconnected",
            actor_user_id: Some(staff.user_id()),
            subject: Some(format!("user:{}", target.user_id)),
            ip: crate::web::client_ip(&request),
            details: json!({ "connection_id": id, "kind": target.kind }),
            ..crate::audit::AuditEvent::default()
        },
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(connect, list_connections, disconnect))]
pub struct ApiDoc;
