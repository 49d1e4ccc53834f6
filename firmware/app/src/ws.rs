//! The WebSocket client over a [`Conn`]: the handshake (subprotocols `conclave.v1.bin` and
//! `bearer.<token>`), binary frames both ways with postcard messages, pings answered, and a
//! close that waits for the server's.
//!
//! embedded-websocket's codec is used directly: its framers are built on `futures` streams or
//! its own blocking trait, neither of which is embedded-io-async.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use conclave_device_core::endpoint::Endpoint;
use conclave_device_core::wire;
use embedded_io_async::{Read, Write};
use embedded_websocket::{
    Error as WsError, WebSocketClient, WebSocketCloseStatusCode, WebSocketOptions,
    WebSocketReceiveMessageType as Rx, WebSocketSendMessageType as Tx, WebSocketState,
};

use crate::net::{Conn, NetError};

#[derive(Debug)]
pub enum WsFailure {
    Net(NetError),
    /// The server refused the upgrade (401: the token is unknown or revoked).
    Refused(Option<u16>),
    Protocol,
    Closed,
}

impl From<NetError> for WsFailure {
    fn from(e: NetError) -> Self {
        Self::Net(e)
    }
}

/// What one read produced.
pub enum Incoming {
    Message(wire::ServerMessage),
    /// A frame the protocol does not know (logged, skipped).
    Unreadable,
    /// Control traffic handled here (pings), or part of a message.
    Nothing,
}

pub struct WebSocket<'c> {
    pub conn: Conn<'c>,
    ws: WebSocketClient<esp_hal::rng::Rng>,
    rx: Box<[u8]>,
    filled: usize,
    frame: Box<[u8]>,
    /// The message being assembled from continuation frames.
    message: alloc::vec::Vec<u8>,
    tx: Box<[u8]>,
}

impl<'c> WebSocket<'c> {
    pub async fn connect(
        mut conn: Conn<'c>,
        endpoint: &Endpoint,
        token: &str,
    ) -> Result<Self, WsFailure> {
        let mut ws = WebSocketClient::new_client(esp_hal::rng::Rng::new());
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
            message: alloc::vec::Vec::new(),
            tx,
        })
    }

    pub async fn send(&mut self, message: &wire::DeviceMessage) -> Result<(), WsFailure> {
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
    pub async fn fill(&mut self) -> Result<(), WsFailure> {
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
    pub async fn process(&mut self) -> Result<Option<Incoming>, WsFailure> {
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
    ) -> Result<Incoming, WsFailure> {
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
                    Err(e) => {
                        log::warn!("ws: unreadable frame: {e}");
                        Ok(Incoming::Unreadable)
                    }
                }
            }
            Rx::Ping => {
                let payload: alloc::vec::Vec<u8> = data.to_vec();
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
                let payload: alloc::vec::Vec<u8> = data.to_vec();
                if let Ok(len) = self.ws.write(Tx::CloseReply, true, &payload, &mut self.tx) {
                    let _ = self.conn.write_all(&self.tx[..len]).await;
                    let _ = self.conn.flush().await;
                }
                let code = payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(1005);
                log::info!("ws: the server closed the connection ({code})");
                Err(WsFailure::Closed)
            }
            Rx::CloseCompleted => Err(WsFailure::Closed),
        }
    }

    /// Sends a ping (the server's idle timeout counts it as activity).
    pub async fn ping(&mut self) -> Result<(), WsFailure> {
        let len = self
            .ws
            .write(Tx::Ping, true, b"k", &mut self.tx)
            .map_err(|_| WsFailure::Protocol)?;
        self.conn.write_all(&self.tx[..len]).await?;
        self.conn.flush().await?;
        Ok(())
    }

    /// Closes like a well-behaved device: the close frame, then reads until the server's.
    pub async fn close(mut self) {
        if self.ws.state == WebSocketState::Open
            && let Ok(len) =
                self.ws
                    .close(WebSocketCloseStatusCode::NormalClosure, None, &mut self.tx)
            && self.conn.write_all(&self.tx[..len]).await.is_ok()
        {
            let _ = self.conn.flush().await;
            let deadline = embassy_time::Instant::now() + embassy_time::Duration::from_secs(2);
            while embassy_time::Instant::now() < deadline {
                match embassy_time::with_timeout(embassy_time::Duration::from_secs(2), self.fill())
                    .await
                {
                    Ok(Ok(())) => while let Ok(Some(_)) = self.process().await {},
                    _ => break,
                }
                if self.ws.state == WebSocketState::Closed {
                    break;
                }
            }
        }
        self.conn.close().await;
    }
}

/// A short description for logs.
pub fn describe(failure: &WsFailure) -> String {
    match failure {
        WsFailure::Net(e) => format!("{e}"),
        WsFailure::Refused(Some(401)) => String::from("the server refused the device token (401)"),
        WsFailure::Refused(code) => format!("the server refused the connection ({code:?})"),
        WsFailure::Protocol => String::from("a WebSocket protocol error"),
        WsFailure::Closed => String::from("the connection closed"),
    }
}
