//! A local stub of the Revolut Merchant API as documented: orders (create, read, refund) and
//! webhook registration, checking the headers every call must carry. Tests move orders
//! between states and send signed webhooks the way Revolut does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

pub const SECRET_KEY: &str = "sk_test_stub";
pub const WEBHOOK_SECRET: &str = "wsk_stub_current";

#[derive(Default)]
pub struct Stub {
    pub orders: Mutex<HashMap<String, Value>>,
    /// Every create request's body, in order.
    pub created: Mutex<Vec<Value>>,
    pub refunds: Mutex<Vec<(String, Value)>>,
    /// Answer the next create with a 503.
    pub fail_next_create: AtomicBool,
    /// Headers of the last request: (Authorization, Revolut-Api-Version).
    pub last_headers: Mutex<(String, String)>,
}

impl Stub {
    pub fn set_state(&self, id: &str, state: &str) {
        let mut orders = self.orders.lock().unwrap();
        orders.get_mut(id).expect("a stub order")["state"] = json!(state);
    }

    pub fn created(&self) -> Vec<Value> {
        self.created.lock().unwrap().clone()
    }
}

pub struct RevolutStub {
    pub url: String,
    pub stub: Arc<Stub>,
    _server: actix_web::dev::ServerHandle,
}

fn authorized(stub: &Stub, request: &HttpRequest) -> Option<HttpResponse> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    *stub.last_headers.lock().unwrap() = (header("authorization"), header("revolut-api-version"));
    if header("authorization") != format!("Bearer {SECRET_KEY}") {
        return Some(
            HttpResponse::Unauthorized().json(json!({"code": 1001, "message": "Unauthenticated"})),
        );
    }
    if header("revolut-api-version").is_empty() {
        return Some(
            HttpResponse::BadRequest()
                .json(json!({"code": 1000, "message": "Revolut-Api-Version header is required"})),
        );
    }
    None
}

async fn create_order(
    stub: web::Data<Stub>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(refused) = authorized(&stub, &request) {
        return refused;
    }
    if stub.fail_next_create.swap(false, Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"message": "Service temporarily unavailable"}));
    }
    if !body["amount"].is_i64() || !body["currency"].is_string() {
        return HttpResponse::BadRequest()
            .json(json!({"message": "amount (integer, minor units) and currency are required"}));
    }
    stub.created.lock().unwrap().push(body.0.clone());
    let id = uuid::Uuid::new_v4().to_string();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let order = json!({
        "id": id,
        "token": token,
        "type": "payment",
        "state": "pending",
        "amount": body["amount"],
        "currency": body["currency"],
        "merchant_order_ext_ref": body["merchant_order_ext_ref"],
        "checkout_url": format!("https://checkout.revolut.com/payment-link/{token}"),
    });
    stub.orders.lock().unwrap().insert(id, order.clone());
    HttpResponse::Created().json(order)
}

async fn get_order(
    stub: web::Data<Stub>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Some(refused) = authorized(&stub, &request) {
        return refused;
    }
    match stub.orders.lock().unwrap().get(id.as_str()) {
        Some(order) => HttpResponse::Ok().json(order),
        None => HttpResponse::NotFound().json(json!({"message": "Order not found"})),
    }
}

async fn refund(
    stub: web::Data<Stub>,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(refused) = authorized(&stub, &request) {
        return refused;
    }
    let completed = stub
        .orders
        .lock()
        .unwrap()
        .get(id.as_str())
        .is_some_and(|o| o["state"] == "completed");
    if !completed {
        return HttpResponse::BadRequest()
            .json(json!({"message": "Only completed orders can be refunded"}));
    }
    stub.refunds.lock().unwrap().push((id.into_inner(), body.0));
    HttpResponse::Created().json(
        json!({"id": uuid::Uuid::new_v4().to_string(), "type": "refund", "state": "completed"}),
    )
}

async fn register(
    stub: web::Data<Stub>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(refused) = authorized(&stub, &request) {
        return refused;
    }
    HttpResponse::Ok().json(json!({
        "id": "wh-1", "url": body["url"], "events": body["events"], "signing_secret": WEBHOOK_SECRET,
    }))
}

impl RevolutStub {
    pub async fn start() -> Self {
        let stub = Arc::new(Stub::default());
        let data = web::Data::from(stub.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/api/orders", web::post().to(create_order))
                .route("/api/orders/{id}", web::get().to(get_order))
                .route("/api/orders/{id}/refund", web::post().to(refund))
                .route("/api/webhooks", web::post().to(register))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            stub,
            _server: handle,
        }
    }
}

/// Sends a webhook to the app as Revolut would: `signatures` are the secrets to sign with
/// (several during a rotation), `age_ms` how old its timestamp is.
pub async fn deliver(
    app: &crate::helpers::TestApp,
    secrets: &[&str],
    event: &str,
    order_id: &str,
    age_ms: i64,
) -> u16 {
    let body =
        json!({"event": event, "order_id": order_id, "merchant_order_ext_ref": "x"}).to_string();
    let timestamp = chrono::Utc::now().timestamp_millis() - age_ms;
    let signature = secrets
        .iter()
        .map(|secret| conclave::billing::revolut::sign(secret, timestamp, body.as_bytes()))
        .collect::<Vec<_>>()
        .join(",");
    app.client
        .post(app.url("/api/v1/billing/webhooks/revolut"))
        .header("content-type", "application/json")
        .header("Revolut-Request-Timestamp", timestamp.to_string())
        .header("Revolut-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
