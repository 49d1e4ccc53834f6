//! Compiles the operator's keys into the firmware:
//! - `CONCLAVE_OTA_PUBLIC_KEY`: the update key, as 64 hex digits or the path of the `.pub` file
//!   from `conclave firmware keygen` (without it the firmware refuses every update);
//! - `CONCLAVE_TLS_CA`: the path of the CA certificate (PEM or DER) that signs the server's
//!   certificate, for `https://` servers (without it the firmware refuses `https://`).

use std::path::Path;

use base64::Engine as _;

fn main() {
    for var in [
        "CONCLAVE_OTA_PUBLIC_KEY",
        "CONCLAVE_TLS_CA",
        "CONCLAVE_WIFI_SSID",
        "CONCLAVE_WIFI_PASSWORD",
        "CONCLAVE_SERVER_URL",
        "CONCLAVE_CLAIM_CODE",
        "CONCLAVE_DEVICE_TOKEN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);

    let key = match std::env::var("CONCLAVE_OTA_PUBLIC_KEY") {
        Ok(value) if Path::new(value.trim()).is_file() => {
            println!("cargo:rerun-if-changed={}", value.trim());
            std::fs::read_to_string(value.trim()).expect("read CONCLAVE_OTA_PUBLIC_KEY")
        }
        Ok(value) => value,
        Err(_) => String::new(),
    };
    let key = key
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("")
        .to_owned();
    if !key.is_empty() && (key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit())) {
        panic!(
            "CONCLAVE_OTA_PUBLIC_KEY: 64 hex digits (or the .pub file of `conclave firmware keygen`)"
        );
    }
    std::fs::write(out.join("ota_public_key.txt"), key).expect("write OUT_DIR");

    let ca = match std::env::var("CONCLAVE_TLS_CA") {
        Ok(path) if !path.trim().is_empty() => {
            println!("cargo:rerun-if-changed={}", path.trim());
            let bytes = std::fs::read(path.trim()).expect("read CONCLAVE_TLS_CA");
            pem_to_der(&bytes)
        }
        _ => Vec::new(),
    };
    std::fs::write(out.join("tls_ca.der"), ca).expect("write OUT_DIR");
}

/// The first certificate of a PEM file, or the bytes as they are (DER).
fn pem_to_der(bytes: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bytes.to_vec();
    };
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else {
        return bytes.to_vec();
    };
    let body = &text[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body
        .find("-----END CERTIFICATE-----")
        .expect("CONCLAVE_TLS_CA: an unterminated PEM certificate");
    let base64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .expect("CONCLAVE_TLS_CA: the PEM certificate is not valid base64")
}
