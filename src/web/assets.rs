//! Static files (CSS, JS, icons), embedded in the binary.
//!
//! Pages link them by content-hashed names (`asset("css/conclave.css")` in a template gives
//! `/static/css/conclave.3f9a1c2e.css`), which are cached for a year (`immutable`): a new
//! build changes the name, so browsers never hold a stale file. Plain names still work, with a
//! short cache (scripts import each other by plain relative names; the service worker lists
//! plain names). Each file is compressed once, with brotli and gzip at their best settings,
//! the first time it is asked for, and served in the encoding the client prefers; the ETag
//! answers 304.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use actix_web::http::header::{self, EntityTag, IfNoneMatch};
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::RustEmbed;

use crate::error::AppError;

#[derive(RustEmbed)]
#[folder = "static/"]
struct EmbeddedStatic;

/// A year: for content-hashed names, which never change meaning.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const SHORT: &str = "public, max-age=3600";

/// The first 8 hex digits of a file's SHA-256: enough to tell versions apart.
fn short_hash(sha256: &[u8; 32]) -> String {
    sha256[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The content-hashed URL of an embedded file (`css/conclave.css` →
/// `/static/css/conclave.3f9a1c2e.css`); the plain URL when there is no such file.
pub fn url(path: &str) -> String {
    let Some(file) = EmbeddedStatic::get(path) else {
        return format!("/static/{path}");
    };
    let hash = short_hash(&file.metadata.sha256_hash());
    match path.rsplit_once('.') {
        Some((stem, ext)) if !stem.ends_with('/') => format!("/static/{stem}.{hash}.{ext}"),
        _ => format!("/static/{path}.{hash}"),
    }
}

/// The Tera function `asset(path="css/conclave.css")`.
pub fn tera_function(args: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    let path = args
        .get("path")
        .and_then(tera::Value::as_str)
        .ok_or_else(|| tera::Error::msg("asset(path=\"…\"): the path of a file under static/"))?;
    if EmbeddedStatic::get(path).is_none() {
        return Err(tera::Error::msg(format!("asset: no static file {path}")));
    }
    Ok(tera::Value::String(url(path)))
}

/// Splits a requested name into the embedded file and the hash it asked for, if any:
/// `css/conclave.3f9a1c2e.css` → (`css/conclave.css`, Some(`3f9a1c2e`)).
fn resolve(requested: &str) -> Option<(String, Option<String>)> {
    if EmbeddedStatic::get(requested).is_some() {
        return Some((requested.to_owned(), None));
    }
    let (dir, name) = requested.rsplit_once('/').unwrap_or(("", requested));
    let mut parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 2 {
        return None;
    }
    let hash_at = if parts.len() == 2 { 1 } else { parts.len() - 2 };
    let hash = parts.remove(hash_at);
    if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let plain = parts.join(".");
    let path = if dir.is_empty() {
        plain
    } else {
        format!("{dir}/{plain}")
    };
    EmbeddedStatic::get(&path).map(|_| (path, Some(hash.to_owned())))
}

/// One file in each encoding, compressed on first use.
struct Encoded {
    identity: Vec<u8>,
    brotli: Vec<u8>,
    gzip: Vec<u8>,
}

static ENCODED: LazyLock<Mutex<HashMap<String, Arc<Encoded>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn encoded(path: &str, data: &[u8]) -> Arc<Encoded> {
    if let Some(found) = ENCODED.lock().ok().and_then(|m| m.get(path).cloned()) {
        return found;
    }
    let mut brotli = Vec::new();
    {
        let params = brotli::enc::BrotliEncoderParams {
            quality: 11,
            ..Default::default()
        };
        let mut input = data;
        let _ = brotli::BrotliCompress(&mut input, &mut brotli, &params);
    }
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let gzip = match gzip.write_all(data).and_then(|()| gzip.try_finish()) {
        Ok(()) => gzip.get_ref().clone(),
        Err(_) => Vec::new(),
    };
    let entry = Arc::new(Encoded {
        identity: data.to_vec(),
        brotli,
        gzip,
    });
    if let Ok(mut cache) = ENCODED.lock() {
        cache.insert(path.to_owned(), entry.clone());
    }
    entry
}

/// The encoding to send: brotli, then gzip, when the client accepts it (q > 0) and it is
/// smaller than the file itself.
fn negotiate<'a>(request: &HttpRequest, file: &'a Encoded) -> (Option<&'static str>, &'a [u8]) {
    let accepted = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepts = |name: &str| {
        accepted.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    if accepts("br") && !file.brotli.is_empty() && file.brotli.len() < file.identity.len() {
        (Some("br"), &file.brotli)
    } else if accepts("gzip") && !file.gzip.is_empty() && file.gzip.len() < file.identity.len() {
        (Some("gzip"), &file.gzip)
    } else {
        (None, &file.identity)
    }
}

/// `GET /static/{path}`.
pub async fn serve(
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let requested = path.into_inner();
    let (file, hash) = resolve(&requested)
        .ok_or_else(|| AppError::NotFound(format!("No static file {requested}.")))?;
    let cache = match &hash {
        None => SHORT,
        Some(hash) => {
            let current = EmbeddedStatic::get(&file)
                .map(|f| short_hash(&f.metadata.sha256_hash()))
                .unwrap_or_default();
            // An old page asking for an older build's file gets today's, not to be kept.
            if *hash == current {
                IMMUTABLE
            } else {
                "no-cache"
            }
        }
    };
    respond(&request, &file, cache)
}

/// The service worker with its shell list (and offline page) pointing at the content-hashed
/// names the pages use, and a cache name that changes with them, so a new build's worker
/// replaces the old shell. Made once per process.
static SERVICE_WORKER: LazyLock<(String, EntityTag)> = LazyLock::new(|| {
    let source = EmbeddedStatic::get("js/sw.js")
        .map(|f| String::from_utf8_lossy(&f.data).into_owned())
        .unwrap_or_default();
    let mut text = source;
    let mut names = String::new();
    for path in EmbeddedStatic::iter() {
        let hashed = url(&path);
        names.push_str(&hashed);
        for quote in ['\'', '"'] {
            text = text.replace(
                &format!("{quote}/static/{path}{quote}"),
                &format!("{quote}{hashed}{quote}"),
            );
        }
    }
    use sha2::Digest as _;
    let version: String = sha2::Sha256::digest(names.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    text = text.replace(
        "'conclave-shell-v2'",
        &format!("'conclave-shell-{version}'"),
    );
    let etag: String = sha2::Sha256::digest(text.as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (text, EntityTag::new_strong(etag))
});

/// `GET /sw.js`: the service worker (offline use). Served from the root so that it may
/// control every page, and revalidated on every check so a new version takes over promptly.
pub async fn service_worker(request: HttpRequest) -> Result<HttpResponse, AppError> {
    let (body, etag) = &*SERVICE_WORKER;
    if let Ok(IfNoneMatch::Items(tags)) = <IfNoneMatch as header::Header>::parse(&request)
        && tags.iter().any(|tag| tag.strong_eq(etag))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header(header::ETag(etag.clone()))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type("text/javascript")
        .insert_header(header::ETag(etag.clone()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body.clone()))
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
            .insert_header((header::CACHE_CONTROL, cache_control.to_owned()))
            .finish());
    }
    let mime = file.metadata.mimetype().to_owned();
    let encoded = encoded(path, &file.data);
    let (encoding, body) = negotiate(request, &encoded);
    let mut response = HttpResponse::Ok();
    response
        .content_type(mime)
        .insert_header(header::ETag(etag))
        .insert_header((header::CACHE_CONTROL, cache_control.to_owned()))
        .insert_header((header::VARY, "Accept-Encoding"));
    if let Some(encoding) = encoding {
        response.insert_header((header::CONTENT_ENCODING, encoding));
    }
    Ok(response.body(body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_resolve_to_their_files() {
        let hashed = url("css/conclave.css");
        let requested = hashed.strip_prefix("/static/").expect("a /static/ URL");
        assert_ne!(requested, "css/conclave.css");
        let (file, hash) = resolve(requested).expect("the hashed name resolves");
        assert_eq!(file, "css/conclave.css");
        assert_eq!(hash.as_deref().map(str::len), Some(8));
        assert_eq!(
            resolve("css/conclave.css"),
            Some(("css/conclave.css".to_owned(), None))
        );
        let (vendor, _) =
            resolve(url("vendor/highlight/highlight.min.js").trim_start_matches("/static/"))
                .expect("a vendored file resolves");
        assert_eq!(vendor, "vendor/highlight/highlight.min.js");
        assert_eq!(resolve("css/conclave.zzzzzzzz.css"), None);
        assert_eq!(resolve("css/missing.0123abcd.css"), None);
        assert_eq!(resolve("../Cargo.toml"), None);
    }
}
