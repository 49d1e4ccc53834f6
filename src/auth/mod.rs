//! Accounts: who people are and how they prove it.
//!
//! Owns users, email addresses, passwords (policy + argon2id), and user administration (the
//! `conclave user` commands). Sign-in, sessions, CSRF, 2FA, OIDC and API tokens build on this
//! module; other modules will reach it only through the `Identity` seam.

pub mod api_tokens;
pub mod captcha;
pub mod deletion;
mod email;
pub mod email_tokens;
pub mod handlers;
pub mod identity;
pub mod login;
pub mod oidc;
pub mod oidc_handlers;
pub mod password;
pub mod password_handlers;
pub mod passwords;
pub mod personal_keys;
pub mod preferences;
pub mod private_handlers;
pub mod session_handlers;
pub mod sessions;
pub mod signup;
pub mod sweep;
pub mod token_handlers;
pub mod two_factor;
pub mod two_factor_handlers;
pub mod users;

pub use email::Email;
pub use password::{PasswordHasher, PasswordPolicy};
