//! How the API writes times: RFC 3339 in UTC with milliseconds (`2026-11-22T10:04:05.123Z`).
//! The database keeps naive UTC timestamps; these helpers put the zone back on the way out.

use chrono::NaiveDateTime;
use serde::Serializer;

/// A stored (UTC) timestamp as RFC 3339 text.
pub fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// For `#[serde(serialize_with = "crate::time::serialize")]`.
pub fn serialize<S: Serializer>(at: &NaiveDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*at))
}

/// For `#[serde(serialize_with = "crate::time::serialize_opt")]`.
pub fn serialize_opt<S: Serializer>(
    at: &Option<NaiveDateTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_str(&rfc3339(*at)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        let at = chrono::DateTime::from_timestamp_millis(1_795_000_000_123)
            .expect("a valid instant")
            .naive_utc();
        assert_eq!(rfc3339(at), "2026-11-18T11:06:40.123Z");
        let json = serde_json::to_value(Wrapper { at: Some(at) }).expect("serializes");
        assert_eq!(json["at"], "2026-11-18T11:06:40.123Z");
        let none = serde_json::to_value(Wrapper { at: None }).expect("serializes");
        assert!(none["at"].is_null());
    }

    #[derive(serde::Serialize)]
    struct Wrapper {
        #[serde(serialize_with = "serialize_opt")]
        at: Option<NaiveDateTime>,
    }
}
