//! The floor of an actix-web + actix-ws server, for `benches/realtime.rs`: the same HTTP stack
//! and WebSocket crate Conclave uses, with nothing of Conclave's — each connection answers
//! `subscribe` with `subscribed` and otherwise only holds its session. What an idle
//! connection costs here, Conclave cannot go below while it serves WebSockets through
//! actix-web (its HTTP/1 dispatcher keeps a read and a write buffer per connection).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

async fn connect(request: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, stream) = actix_ws::handle(&request, body)?;
    let mut stream = stream.aggregate_continuations();
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = stream.recv().await {
            let answered = match message {
                actix_ws::AggregatedMessage::Text(text) if text.contains("subscribe") => {
                    session.text(r#"{"type":"subscribed"}"#).await
                }
                actix_ws::AggregatedMessage::Ping(bytes) => session.pong(&bytes).await,
                actix_ws::AggregatedMessage::Close(_) => return,
                _ => Ok(()),
            };
            if answered.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("BASELINE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let server = HttpServer::new(|| App::new().route("/", web::get().to(connect)))
        .workers(1)
        .max_connections(100_000)
        .bind(listen)?;
    for address in server.addrs() {
        println!("listening on {address}");
    }
    server.run().await
}
