//! The HTTP/1.1 the device speaks besides the WebSocket: exchanging its claim code for a token
//! (`POST /api/v1/devices/claim`) and downloading an update in Range requests. Requests are
//! built here; answers are parsed with `httparse`. Bodies must have a `Content-Length` (the
//! server always sends one for these two routes); chunked answers are refused.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::endpoint::Endpoint;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The answer's head is not HTTP/1.1, or too large for the buffer.
    Malformed,
    /// No `Content-Length`.
    NoLength,
    /// The server answered with this status (and its `detail`, if any).
    Status(u16, String),
    /// The answer is not what the route returns.
    UnexpectedBody,
}

impl core::fmt::Display for HttpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed => f.write_str("the server's answer is not valid HTTP/1.1"),
            Self::NoLength => f.write_str("the server's answer has no Content-Length"),
            Self::Status(status, detail) if detail.is_empty() => {
                write!(f, "the server answered {status}")
            }
            Self::Status(status, detail) => write!(f, "the server answered {status}: {detail}"),
            Self::UnexpectedBody => f.write_str("the server's answer has an unexpected body"),
        }
    }
}

/// `POST` of the claim exchange.
pub fn claim_request(server: &Endpoint, code: &str, firmware: &str, chip: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Claim<'a> {
        code: &'a str,
        firmware: &'a str,
        chip: &'a str,
    }
    let mut body = alloc::vec![0u8; 512];
    // Codes, versions and chip names are short ASCII: 512 bytes always hold them.
    let used = serde_json_core::to_slice(
        &Claim {
            code,
            firmware,
            chip,
        },
        &mut body,
    )
    .unwrap_or(0);
    body.truncate(used);
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::endpoint::CLAIM_PATH,
        server.host_header(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// `GET` of bytes `from..=to` of an update image.
pub fn range_request(url: &Endpoint, token: &str, sha256: &str, from: u32, to: u32) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nRange: bytes={from}-{to}\r\nIf-Range: \"{sha256}\"\r\nConnection: keep-alive\r\n\r\n",
        url.path,
        url.host_header(),
    )
    .into_bytes()
}

/// The head of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head (the body starts after them).
    pub length: usize,
    pub content_length: usize,
    /// The first byte of a 206 answer's range.
    pub range_start: Option<u32>,
}

/// Parses an answer's head from the bytes received so far; `Ok(None)` until it is complete.
pub fn parse_head(received: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(received) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed),
    };
    let status = response.code.ok_or(HttpError::Malformed)?;
    let mut content_length = None;
    let mut range_start = None;
    for header in response.headers.iter() {
        let value = core::str::from_utf8(header.value).map_err(|_| HttpError::Malformed)?;
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.trim().parse().map_err(|_| HttpError::Malformed)?);
        } else if header.name.eq_ignore_ascii_case("content-range") {
            // `bytes 1024-2047/100000`
            range_start = value
                .trim()
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|start| start.parse().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::NoLength);
        }
    }
    Ok(Some(Head {
        status,
        length,
        content_length: content_length.ok_or(HttpError::NoLength)?,
        range_start,
    }))
}

/// The token from a claim answer's body, or the server's reason for refusing it.
pub fn claim_answer(status: u16, body: &[u8]) -> Result<String, HttpError> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow, default)]
        token: Option<&'a str>,
        #[serde(borrow, default)]
        detail: Option<&'a str>,
    }
    let mut scratch = [0u8; 512];
    let parsed = serde_json_core::from_slice_escaped::<Answer<'_>>(body, &mut scratch)
        .ok()
        .map(|(answer, _)| answer);
    if !(200..300).contains(&status) {
        let detail = parsed.and_then(|a| a.detail).unwrap_or_default();
        return Err(HttpError::Status(status, String::from(detail)));
    }
    parsed
        .and_then(|a| a.token)
        .filter(|t| t.starts_with("cnd_"))
        .map(String::from)
        .ok_or(HttpError::UnexpectedBody)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_request_is_json_and_its_answer_gives_the_token() {
        let server = Endpoint::parse("http://10.1.2.3:8080").unwrap();
        let request =
            String::from_utf8(claim_request(&server, "K7QX-M2PD", "0.1.0", "esp32c3")).unwrap();
        assert!(
            request.starts_with("POST /api/v1/devices/claim HTTP/1.1\r\nHost: 10.1.2.3:8080\r\n")
        );
        let body = r#"{"code":"K7QX-M2PD","firmware":"0.1.0","chip":"esp32c3"}"#;
        assert!(request.ends_with(body), "{request}");
        assert!(request.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(
            claim_answer(201, br#"{"device_id":3,"token":"cnd_x1"}"#),
            Ok("cnd_x1".into())
        );
        assert_eq!(
            claim_answer(
                404,
                br#"{"title":"Not found","detail":"claim code expired"}"#
            ),
            Err(HttpError::Status(404, "claim code expired".into()))
        );
        assert_eq!(claim_answer(200, b"<html>"), Err(HttpError::UnexpectedBody));
    }

    #[test]
    fn answer_heads_are_parsed_incrementally() {
        let head = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4096-8191/100000\r\nContent-Length: 4096\r\n\r\nxyz";
        assert_eq!(parse_head(&head[..20]), Ok(None));
        assert_eq!(
            parse_head(head),
            Ok(Some(Head {
                status: 206,
                length: head.len() - 3,
                content_length: 4096,
                range_start: Some(4096)
            }))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::NoLength)
        );
        assert_eq!(parse_head(b"SSH-2.0-x\r\n\r\n"), Err(HttpError::Malformed));
        let url = Endpoint::parse("https://h.example/api/v1/devices/firmware/4").unwrap();
        let request = String::from_utf8(range_request(&url, "cnd_t", "ab", 0, 4095)).unwrap();
        assert!(
            request.contains("Range: bytes=0-4095\r\n")
                && request.contains("Authorization: Bearer cnd_t\r\n")
        );
    }
}
