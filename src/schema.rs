//! Diesel table definitions shared by both backends. Written by hand to match
//! `migrations/sqlite` and `migrations/postgres`; `tests/api/schema.rs` checks all three agree.
//! Only types `MultiConnection` supports on both backends appear here (no Bool, no Binary).

diesel::table! {
    jobs (id) {
        id -> BigInt,
        queue -> Text,
        kind -> Text,
        payload -> Text,
        state -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        run_at -> Timestamp,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
    }
}
