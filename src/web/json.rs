//! The JSON body extractor every handler uses: `actix_web::web::Json` (the same limit, content
//! type check and error answers, from the app's `JsonConfig`), with one difference: a number
//! written with a zero fraction (`30.0`) is taken as the integer it equals.
//!
//! JSON (RFC 8259) has one number type and JSON Schema counts `30.0` as an integer, so clients
//! that compute numbers as floats (JavaScript, Python's `json` with floats, schema-driven tools
//! such as schemathesis) may send integers that way; serde's integer fields would refuse them.
//! A fraction that is not zero (`30.5`) still fails for integer fields, with a 400 that says so.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let document = web::Json::<serde_json::Value>::from_request(request, payload);
        Box::pin(async move {
            let mut document = document.await?.into_inner();
            // One walk for every body; the field's path is only worked out for a refusal.
            if integral_numbers(&mut document)
                && let Some(field) = nul_in(&document, "")
            {
                return Err(AppError::BadRequest(format!(
                    "{field}: text may not contain the NUL character (\\u0000)"
                ))
                .into());
            }
            T::deserialize(document)
                .map(Json)
                .map_err(|e| AppError::BadRequest(format!("The JSON body is invalid: {e}")).into())
        })
    }
}

/// The path of the first string (or key) holding a NUL character: PostgreSQL cannot store one
/// in text, and no field of ours means to take one, so it is refused on every backend alike.
fn nul_in(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => Some(here()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in(item, &format!("{}[{i}]", here()))),
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let inner = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if name.contains('\0') {
                Some(here())
            } else {
                nul_in(field, &inner)
            }
        }),
        _ => None,
    }
}

/// Integers up to 2^53 are exact in an `f64`; beyond, `1e19` may not be the number written.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Rewrites every float with a zero fraction, within ±2^53, as that integer. Larger ones stay
/// floats (so an integer field refuses them): the float may not be the number the client
/// wrote (`-9223372036854775809` parses as the float of `i64::MIN`). Also answers whether
/// any string or key holds a NUL character (then [`nul_in`] names it).
fn integral_numbers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(number) if number.is_f64() => {
            let Some(float) = number.as_f64() else {
                return false;
            };
            if float.fract() == 0.0 && float.abs() <= EXACT {
                // Exact: within ±2^53 the conversion neither rounds nor saturates.
                *value = Value::from(float as i64);
            }
            false
        }
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |nul, item| integral_numbers(item) | nul),
        Value::Object(fields) => fields.iter_mut().fold(false, |nul, (name, field)| {
            integral_numbers(field) | name.contains('\0') | nul
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{integral_numbers, nul_in};
    use serde_json::json;

    #[test]
    fn a_nul_anywhere_is_found_with_its_path() {
        assert_eq!(nul_in(&json!({"name": "ok", "tags": ["a", "b"]}), ""), None);
        assert_eq!(
            nul_in(&json!({"name": "a\u{0}b"}), "").as_deref(),
            Some("name")
        );
        assert_eq!(
            nul_in(&json!({"rule": {"tags": ["x", "\u{0}"]}}), "").as_deref(),
            Some("rule.tags[1]")
        );
        assert_eq!(nul_in(&json!("\u{0}"), "").as_deref(), Some("body"));
        assert!(!integral_numbers(&mut json!({"a": ["b", 1.0]})));
        assert!(integral_numbers(&mut json!({"a": [{"b\u{0}": 1}]})));
        assert!(integral_numbers(&mut json!([2.0, "x\u{0}"])));
    }

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut document = json!({
            "days": 30.0,
            "negative": -590929.0,
            "half": 30.5,
            "list": [1.0, 2.25, {"deep": 7.0}],
            "large": 1e300,
            "beyond": -9223372036854775809.0,
            "text": "3.0",
        });
        integral_numbers(&mut document);
        assert_eq!(
            document,
            json!({
                "days": 30,
                "negative": -590929,
                "half": 30.5,
                "list": [1, 2.25, {"deep": 7}],
                "large": 1e300,
                "beyond": -9223372036854775809.0,
                "text": "3.0",
            })
        );
        assert!(document["days"].is_i64());
    }
}
