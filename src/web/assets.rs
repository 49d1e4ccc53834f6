//! Static files (CSS, JS, icons), embedded in the binary and served with a strong ETag.

use actix_web::http::header::{self, EntityTag, IfNoneMatch};
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::RustEmbed;

use crate::error::AppError;

#[derive(RustEmbed)]
#[folder = "static/"]
struct EmbeddedStatic;

/// `GET /static/{path}`.
pub async fn serve(
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    respond(&request, &path.into_inner(), "public, max-age=3600")
}

/// `GET /sw.js`: the service worker (offline use). Served from the root so that it may
/// control every page, and revalidated on every check so a new version takes over promptly.
pub async fn service_worker(request: HttpRequest) -> Result<HttpResponse, AppError> {
    respond(&request, "js/sw.js", "no-cache")
}

fn respond(
    request: &HttpRequest,
    path: &str,
    cache_control: &str,
) -> Result<HttpResponse, AppError> {
    let file = EmbeddedStatic::get(path)
        .ok_or_else(|| AppError::NotFound(format!("No static file {path}.")))?;
    let hash = file.metadata.sha256_hash();
    let etag = EntityTag::new_strong(hash[..12].iter().map(|b| format!("{b:02x}")).collect());
    if let Ok(IfNoneMatch::Items(tags)) = <IfNoneMatch as header::Header>::parse(request)
        && tags.iter().any(|tag| tag.strong_eq(&etag))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header(header::ETag(etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type(file.metadata.mimetype())
        .insert_header(header::ETag(etag))
        .insert_header((header::CACHE_CONTROL, cache_control.to_owned()))
        .body(file.data.into_owned()))
}
