//! Renders every error response in the format the client asked for: an HTML page for browsers,
//! `application/problem+json` for everything else. Handlers only return `AppError`; this is the
//! single place that decides what the user sees and logs what they must not see.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};

use super::AppState;
use super::security::CspNonce;
use crate::error::{AppError, Problem};

pub async fn render(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let wants_html = prefers_html(req.headers());
    let response = next.call(req).await?;
    let Some(error) = response.response().error() else {
        return Ok(response.map_into_left_body());
    };
    let status = response.status();
    let detail = match error.as_error::<AppError>() {
        Some(AppError::Internal(cause)) => {
            tracing::error!(error = ?cause, "request failed");
            AppError::Internal(anyhow::anyhow!("logged")).public_detail()
        }
        Some(app) => app.public_detail(),
        // actix's own errors (bad JSON, bad path parameters) describe the input: show them.
        None if status.is_client_error() => error.to_string(),
        None => {
            tracing::error!(error = %error, "request failed");
            AppError::Internal(anyhow::anyhow!("logged")).public_detail()
        }
    };
    let mut problem = Problem::new(status, detail);
    problem.error = error
        .as_error::<AppError>()
        .and_then(|app| app.problem().error);
    problem.request_id = response
        .request()
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string);

    let (request, original) = response.into_parts();
    // A browser that needs to sign in is sent to the sign-in page, and back here afterwards.
    if wants_html
        && status == StatusCode::UNAUTHORIZED
        && request.method() == actix_web::http::Method::GET
    {
        let here = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
        let redirect = HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/login?next={next}")))
            .finish();
        return Ok(ServiceResponse::new(request, redirect).map_into_right_body());
    }
    let mut builder = HttpResponse::build(status);
    copy_headers(original.headers(), &mut builder);
    let replacement = if wants_html {
        match html_page(&request, &problem) {
            Ok(page) => builder.content_type("text/html; charset=utf-8").body(page),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the error page");
                builder
                    .content_type("text/plain; charset=utf-8")
                    .body(format!(
                        "{} {}\n{}",
                        problem.status, problem.title, problem.detail
                    ))
            }
        }
    } else {
        builder
            .content_type("application/problem+json")
            .json(&problem)
    };
    Ok(ServiceResponse::new(request, replacement).map_into_right_body())
}

fn html_page(request: &actix_web::HttpRequest, problem: &Problem) -> Result<String, AppError> {
    let state = request
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("application state missing")))?;
    let nonce = request
        .extensions()
        .get::<CspNonce>()
        .map(|n| n.0.clone())
        .unwrap_or_default();
    let csrf = request
        .extensions()
        .get::<super::csrf::CsrfToken>()
        .map(|t| t.0.clone())
        .unwrap_or_default();
    let mut context = super::pages::base_context(state, &nonce, &csrf);
    context.insert("problem", problem);
    context.insert(
        "is_not_found",
        &(problem.status == StatusCode::NOT_FOUND.as_u16()),
    );
    state.templates.render("error.html", &context)
}

/// Keeps headers such as `Retry-After` and `WWW-Authenticate`; drops the body's own headers.
fn copy_headers(from: &HeaderMap, to: &mut actix_web::HttpResponseBuilder) {
    for (name, value) in from {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            to.append_header((name.clone(), value.clone()));
        }
    }
}

/// True when the client ranks HTML above JSON (browsers send `text/html` first).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let position = |needle: &str| accept.find(needle);
    match (position("text/html"), position("json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Body-parsing errors become clear 4xx problems instead of actix's defaults.
pub fn json_error(
    error: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let app = match &error {
        E::OverflowKnownLength { length, limit } => AppError::PayloadTooLarge(format!(
            "The JSON body is {length} bytes; the limit is {limit}."
        )),
        E::Overflow { limit } => {
            AppError::PayloadTooLarge(format!("The JSON body exceeds the limit of {limit} bytes."))
        }
        E::ContentType => {
            AppError::UnsupportedMediaType("Send the body as application/json.".to_owned())
        }
        E::Deserialize(e) => AppError::BadRequest(format!("The JSON body is invalid: {e}")),
        other => AppError::BadRequest(format!("The request body could not be read: {other}")),
    };
    app.into()
}

pub fn form_error(
    error: actix_web::error::UrlencodedError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::UrlencodedError as E;
    let app = match &error {
        E::Overflow { size, limit } => {
            AppError::PayloadTooLarge(format!("The form is {size} bytes; the limit is {limit}."))
        }
        E::ContentType => AppError::UnsupportedMediaType(
            "Send the form as application/x-www-form-urlencoded.".to_owned(),
        ),
        other => AppError::BadRequest(format!("The form is invalid: {other}")),
    };
    app.into()
}

pub async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse, AppError> {
    // Show the path as the user typed it (decoded); the page template escapes it.
    let path = percent_encoding::percent_decode_str(request.path()).decode_utf8_lossy();
    Err(AppError::NotFound(format!("There is nothing at {path}.")))
}

/// 405 for a method the path does not route, with `Allow` naming the ones it does.
pub async fn method_not_allowed(
    request: actix_web::HttpRequest,
    allow: String,
) -> Result<HttpResponse, actix_web::Error> {
    let error = AppError::MethodNotAllowed(format!(
        "{} is not allowed on {}; use {allow}.",
        request.method(),
        request.path()
    ));
    let mut response = actix_web::ResponseError::error_response(&error);
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    // `render` turns the error into the page or problem document and keeps the header.
    Err(actix_web::error::InternalError::from_response(error, response).into())
}

/// A query string that does not parse (e.g. `?limit=abc`) is a 400 problem document naming the
/// field.
pub fn query_error(
    error: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::BadRequest(format!("The query string is invalid: {error}")).into()
}

/// A path segment that does not parse (e.g. `/api/v1/rooms/abc`) is a 404: no such resource.
pub fn path_error(
    error: actix_web::error::PathError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::NotFound(format!("No such resource ({error}).")).into()
}
