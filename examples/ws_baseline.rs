//! The baseline ("physical limit") for `benches/realtime.rs`: a minimal tokio-tungstenite
//! broadcast server on one thread, speaking the few frames of Conclave's protocol the benchmark
//! uses — `subscribe {room}` (answered with `subscribed`) and `post {room, body}` (sent to every
//! subscriber of the room as a `message` frame, serialized once). No authentication, no
//! storage, no limits: what Conclave costs beyond it is what the benchmark measures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Rooms = Arc<Mutex<HashMap<i64, broadcast::Sender<Message>>>>;

fn main() -> std::io::Result<()> {
    let listen = std::env::var("BASELINE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let rooms: Rooms = Arc::default();
        loop {
            let (socket, _) = listener.accept().await?;
            let _ = socket.set_nodelay(true);
            tokio::spawn(serve(socket, rooms.clone()));
        }
    })
}

fn room_of(rooms: &Rooms, room: i64) -> broadcast::Sender<Message> {
    let mut rooms = rooms
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    rooms
        .entry(room)
        .or_insert_with(|| broadcast::channel(1024).0)
        .clone()
}

async fn serve(socket: tokio::net::TcpStream, rooms: Rooms) {
    // Small buffers, like a server tuned for many idle connections.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(socket, Some(config)).await else {
        return;
    };
    let mut subscription: Option<broadcast::Receiver<Message>> = None;
    loop {
        let event = async {
            match subscription.as_mut() {
                Some(receiver) => receiver.recv().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(Message::Text(text))) = incoming else { return };
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(text.as_str()) else { continue };
                let room = frame["room"].as_i64().unwrap_or(0);
                match frame["type"].as_str() {
                    Some("subscribe") => {
                        subscription = Some(room_of(&rooms, room).subscribe());
                        let answer = serde_json::json!({"type": "subscribed", "room": room});
                        if ws.send(Message::text(answer.to_string())).await.is_err() {
                            return;
                        }
                    }
                    Some("post") => {
                        let message = serde_json::json!({
                            "type": "message",
                            "room": room,
                            "message": {"body": frame["body"]},
                        });
                        let _ = room_of(&rooms, room).send(Message::text(message.to_string()));
                    }
                    _ => {}
                }
            }
            Some(message) = event => {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}
