//! The device's WebSocket client over any embedded-io-async connection (TCP or TLS on the
//! chip, a tokio socket in the server's tests): the handshake (subprotocols `conclave.v1.bin`
//! and `bearer.<token>`), binary frames both ways carrying postcard messages, fragmented
//! messages reassembled, pings answered, and a close that waits for the server's.
//!
//! embedded-websocket's codec is used directly: its framers are built on `futures` streams or
//! on its own blocking trait, neither of which is embedded-io-async.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use embedded_io_async::{Read, Write};
use embedded_websocket::{
    Error as WsError, WebSocketClient, WebSocketCloseStatusCode, WebSocketOptions,
    WebSocketReceiveMessageType as Rx, WebSocketSendMessageType as Tx, WebSocketState,
};

use crate::endpoint::Endpoint;
use crate::wire;

#[derive(Debug)]
pub enum WsFailure<E> {
    Io(E),
    /// The server refused the upgrade (401: the token is unknown or revoked).
    Refused(Option<u16>),
    Protocol,
    Closed,
}

impl<E> From<E> for WsFailure<E> {
    fn from(e: E) -> Self {
        Self::Io(e)
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for WsFailure<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "the connection failed: {e:?}"),
            Self::Refused(Some(401)) => f.write_str("the server refused the device token (401)"),
            Self::Refused(code) => write!(f, "the server refused the connection ({code:?})"),
            Self::Protocol => f.write_str("a WebSocket protocol error"),
            Self::Closed => f.write_str("the connection closed"),
        }
    }
}

/// What one read produced.
#[derive(Debug)]
pub enum Incoming {
    /// The server closed the connection with this code (answered; the connection is done).
    Closed(u16),
    Message(wire::ServerMessage),
    /// A frame the protocol does not know (to log and skip).
    Unreadable(wire::ProtocolError),
    /// Control traffic handled here (pings), or part of a message.
    Nothing,
}

pub struct WebSocket<C, R: rand_core::RngCore> {
    pub conn: C,
    ws: WebSocketClient<R>,
    rx: Box<[u8]>,
    filled: usize,
    frame: Box<[u8]>,
    /// The message being assembled from continuation frames.
    message: Vec<u8>,
    tx: Box<[u8]>,
}

impl<C: Read + Write, R: rand_core::RngCore> WebSocket<C, R> {
    /// Upgrades `conn` to the realtime endpoint; `rng` masks the frames.
    pub async fn connect(
        mut conn: C,
        rng: R,
        endpoint: &Endpoint,
        token: &str,
    ) -> Result<Self, WsFailure<C::Error>> {
        let mut ws = WebSocketClient::new_client(rng);
        let host = endpoint.host_header();
        let bearer = format!("bearer.{token}");
        let protocols = [wire::SUBPROTOCOL_BINARY, bearer.as_str()];
        let options = WebSocketOptions {
            path: &endpoint.path,
            host: &host,
            origin: "",
            sub_protocols: Some(&protocols),
            additional_headers: None,
        };
        let mut tx = vec![0u8; wire::MAX_FRAME + 16].into_boxed_slice();
        let (len, key) = ws
            .client_connect(&options, &mut tx)
            .map_err(|_| WsFailure::Protocol)?;
        conn.write_all(&tx[..len]).await?;
        conn.flush().await?;
        let mut rx = vec![0u8; 2_048].into_boxed_slice();
        let mut filled = 0;
        let head = loop {
            if filled == rx.len() {
                return Err(WsFailure::Protocol);
            }
            let n = conn.read(&mut rx[filled..]).await?;
            if n == 0 {
                return Err(WsFailure::Closed);
            }
            filled += n;
            match ws.client_accept(&key, &rx[..filled]) {
                Ok((head, _)) => break head,
                Err(WsError::HttpHeaderIncomplete) => continue,
                Err(WsError::HttpResponseCodeInvalid(code)) => {
                    return Err(WsFailure::Refused(code));
                }
                Err(_) => return Err(WsFailure::Protocol),
            }
        };
        rx.copy_within(head..filled, 0);
        filled -= head;
        Ok(Self {
            conn,
            ws,
            rx,
            filled,
            frame: vec![0u8; 2_048].into_boxed_slice(),
            message: Vec::new(),
            tx,
        })
    }

    pub async fn send(&mut self, message: &wire::DeviceMessage) -> Result<(), WsFailure<C::Error>> {
        let payload = wire::to_binary(message).map_err(|_| WsFailure::Protocol)?;
        let len = self
            .ws
            .write(Tx::Binary, true, &payload, &mut self.tx)
            .map_err(|_| WsFailure::Protocol)?;
        self.conn.write_all(&self.tx[..len]).await?;
        self.conn.flush().await?;
        Ok(())
    }

    /// Reads more bytes from the connection. Cancel-safe: bytes are only consumed by
    /// [`Self::process`], and the connection's read completes only with data.
    pub async fn fill(&mut self) -> Result<(), WsFailure<C::Error>> {
        if self.filled == self.rx.len() {
            return Err(WsFailure::Protocol);
        }
        let n = self.conn.read(&mut self.rx[self.filled..]).await?;
        if n == 0 {
            return Err(WsFailure::Closed);
        }
        self.filled += n;
        Ok(())
    }

    /// Decodes what is buffered, one frame (or part of one) per call; `None` when more bytes
    /// are needed ([`Self::fill`]).
    pub async fn process(&mut self) -> Result<Option<Incoming>, WsFailure<C::Error>> {
        if self.filled == 0 {
            return Ok(None);
        }
        let result = match self.ws.read(&self.rx[..self.filled], &mut self.frame) {
            Ok(result) => result,
            Err(WsError::ReadFrameIncomplete) => return Ok(None),
            Err(_) => return Err(WsFailure::Protocol),
        };
        self.handle(result).await.map(Some)
    }

    async fn handle(
        &mut self,
        result: embedded_websocket::WebSocketReadResult,
    ) -> Result<Incoming, WsFailure<C::Error>> {
        self.rx.copy_within(result.len_from..self.filled, 0);
        self.filled -= result.len_from;
        let data = &self.frame[..result.len_to];
        match result.message_type {
            Rx::Binary | Rx::Text => {
                if self.message.len() + data.len() > wire::MAX_FRAME {
                    return Err(WsFailure::Protocol);
                }
                self.message.extend_from_slice(data);
                if !result.end_of_message {
                    return Ok(Incoming::Nothing);
                }
                let bytes = core::mem::take(&mut self.message);
                match wire::from_binary::<wire::ServerMessage>(&bytes) {
                    Ok(message) => Ok(Incoming::Message(message)),
                    Err(e) => Ok(Incoming::Unreadable(e)),
                }
            }
            Rx::Ping => {
                let payload: Vec<u8> = data.to_vec();
                let len = self
                    .ws
                    .write(Tx::Pong, true, &payload, &mut self.tx)
                    .map_err(|_| WsFailure::Protocol)?;
                self.conn.write_all(&self.tx[..len]).await?;
                self.conn.flush().await?;
                Ok(Incoming::Nothing)
            }
            Rx::Pong => Ok(Incoming::Nothing),
            Rx::CloseMustReply => {
                let payload: Vec<u8> = data.to_vec();
                if let Ok(len) = self.ws.write(Tx::CloseReply, true, &payload, &mut self.tx) {
                    let _ = self.conn.write_all(&self.tx[..len]).await;
                    let _ = self.conn.flush().await;
                }
                let code = payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(1005);
                Ok(Incoming::Closed(code))
            }
            Rx::CloseCompleted => Err(WsFailure::Closed),
        }
    }

    /// Sends a ping (the server's idle timeout counts it as activity).
    pub async fn ping(&mut self) -> Result<(), WsFailure<C::Error>> {
        let len = self
            .ws
            .write(Tx::Ping, true, b"k", &mut self.tx)
            .map_err(|_| WsFailure::Protocol)?;
        self.conn.write_all(&self.tx[..len]).await?;
        self.conn.flush().await?;
        Ok(())
    }

    /// Closes like a well-behaved device: the close frame, then reads until the server's
    /// (wrap it in a timeout: a server that never answers would keep it waiting).
    pub async fn close(&mut self) {
        if self.ws.state != WebSocketState::Open {
            return;
        }
        let Ok(len) = self
            .ws
            .close(WebSocketCloseStatusCode::NormalClosure, None, &mut self.tx)
        else {
            return;
        };
        if self.conn.write_all(&self.tx[..len]).await.is_err() || self.conn.flush().await.is_err() {
            return;
        }
        loop {
            loop {
                match self.process().await {
                    Ok(Some(Incoming::Closed(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            if self.ws.state == WebSocketState::Closed || self.fill().await.is_err() {
                return;
            }
        }
    }
}
