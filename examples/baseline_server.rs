//! The baseline of the HTTP benchmarks: a bare actix-web server, what Conclave costs beyond it
//! is what `benches/startup.rs` and `benches/http.rs` measure.
//!
//! - `/readyz` answers at once (start-up);
//! - `/json` answers a JSON object shaped like `GET /api/v1/me`'s (serialized per request);
//! - `/page` answers a static HTML page of `BASELINE_PAGE_BYTES` bytes (a page's transfer
//!   without its rendering, sessions or database).
//!
//! `BASELINE_LISTEN` (default `127.0.0.1:0`) and `BASELINE_WORKERS` (default 2).

use actix_web::{App, HttpResponse, HttpServer, web};

#[derive(serde::Serialize)]
struct Me {
    user: User,
    memberships: Vec<Membership>,
    via: &'static str,
}

#[derive(serde::Serialize)]
struct User {
    id: i64,
    email: &'static str,
    display_name: &'static str,
    email_verified: bool,
    two_factor: bool,
}

#[derive(serde::Serialize)]
struct Membership {
    tenant_id: i64,
    name: &'static str,
    slug: &'static str,
    role: &'static str,
}

async fn json() -> HttpResponse {
    HttpResponse::Ok().json(Me {
        user: User {
            id: 1,
            email: "bench@example.com",
            display_name: "bench",
            email_verified: true,
            two_factor: false,
        },
        memberships: vec![Membership {
            tenant_id: 1,
            name: "Default workspace",
            slug: "default",
            role: "owner",
        }],
        via: "token",
    })
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("BASELINE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let workers = std::env::var("BASELINE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let page_bytes: usize = std::env::var("BASELINE_PAGE_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(5_000);
    let mut page = String::from("<!doctype html><html><head><title>Rooms</title></head><body>");
    while page.len() + "</body></html>".len() < page_bytes {
        page.push_str("<p>room</p>");
    }
    page.push_str("</body></html>");
    let page = web::Data::new(page);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(page.clone())
            .route(
                "/readyz",
                web::get().to(|| async { HttpResponse::Ok().body("ready") }),
            )
            .route("/json", web::get().to(json))
            .route(
                "/page",
                web::get().to(|page: web::Data<String>| async move {
                    HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body(page.get_ref().clone())
                }),
            )
    })
    .workers(workers)
    .bind(listen)?;
    for address in server.addrs() {
        println!("listening on {address}");
    }
    server.run().await
}
