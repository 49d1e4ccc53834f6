//! The baseline for `benches/startup.rs`: a bare actix-web server with the same worker count
//! and a `/readyz` that answers at once. What Conclave costs beyond it is what we measure.

use actix_web::{App, HttpResponse, HttpServer, web};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("BASELINE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let server = HttpServer::new(|| {
        App::new().route(
            "/readyz",
            web::get().to(|| async { HttpResponse::Ok().body("ready") }),
        )
    })
    .workers(2)
    .bind(listen)?;
    for address in server.addrs() {
        println!("listening on {address}");
    }
    server.run().await
}
