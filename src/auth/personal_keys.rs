//! A person's key for `private` conversations.
//!
//! Each person who uses private conversations has one random 256-bit key. The database holds
//! it only wrapped (AES-256-GCM) by a key derived from their password (argon2id, its own salt
//! and stored costs), so neither a stolen database nor an administrator can open it. The
//! server holds it unwrapped only in memory, after the person unlocks it with their password,
//! until they sign out or leave it unused for `chat.private_idle_minutes`.
//!
//! A private room's data key is wrapped by its owner's personal key (`kek_id` `user:<id>`),
//! never by the server's key-encryption key: the history store asks [`PersonalKeys::key`] and
//! gets nothing while the owner's key is locked.
//!
//! Changing the password re-wraps the personal key (the old password is known). A reset by
//! mail cannot: the key is erased, and with it the person's private history, which nobody
//! could read any more (the reset page says so first).
//!
//! The unlocked keys live in this node's memory only: with several nodes, a person unlocks on
//! each node that serves them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use diesel::prelude::*;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

use super::PasswordHasher;
use super::password::{HashError, ITERATIONS, MEMORY_KIB, PARALLELISM};
use crate::db::{Db, DbConnection, DbError};
use crate::history::keys::{DataKey, KeyError, Wrapped, new_data_key, open_key, seal_key};
use crate::schema::personal_keys;

/// What the personal key's wrapping is bound to.
fn wrap_context(user_id: i64) -> Vec<u8> {
    format!("conclave/personal-key/{user_id}").into_bytes()
}

/// The `kek_id` of data keys wrapped by `user_id`'s personal key.
pub fn kek_id(user_id: i64) -> String {
    format!("user:{user_id}")
}

/// The owner named by a `kek_id` of [`kek_id`]'s form.
pub fn owner_of(kek_id: &str) -> Option<i64> {
    kek_id.strip_prefix("user:")?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum PersonalKeyError {
    /// The password does not open the stored key (it was changed without re-wrapping).
    #[error("the password does not open your private conversations")]
    WrongPassword,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for PersonalKeyError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e.into())
    }
}

/// An unlocked personal key: wraps and unwraps its owner's room keys.
pub struct PersonalKey {
    user_id: i64,
    cipher: aes_gcm::Aes256Gcm,
}

impl PersonalKey {
    fn new(user_id: i64, key: &DataKey) -> Self {
        use aes_gcm::KeyInit as _;
        Self {
            user_id,
            cipher: aes_gcm::Aes256Gcm::new(key.expose_secret().into()),
        }
    }

    pub fn wrap(&self, key: &DataKey, context: &[u8]) -> Wrapped {
        Wrapped {
            kek_id: kek_id(self.user_id),
            blob: seal_key(&self.cipher, key, context),
        }
    }

    pub fn unwrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<DataKey, KeyError> {
        if owner_of(&wrapped.kek_id) != Some(self.user_id) {
            return Err(KeyError::UnknownKek(wrapped.kek_id.clone()));
        }
        open_key(&self.cipher, &wrapped.blob, context)
    }
}

type StoredKey = (String, i32, i32, i32, String);

/// A personal key sealed under a new password, not stored yet.
pub struct Rewrapped {
    user_id: i64,
    salt: String,
    wrapped: String,
}

impl Rewrapped {
    pub fn store(&self, conn: &mut DbConnection) -> QueryResult<()> {
        diesel::update(personal_keys::table.find(self.user_id))
            .set((
                personal_keys::salt.eq(&self.salt),
                personal_keys::m_cost.eq(MEMORY_KIB as i32),
                personal_keys::t_cost.eq(ITERATIONS as i32),
                personal_keys::p_cost.eq(PARALLELISM as i32),
                personal_keys::wrapped.eq(&self.wrapped),
                personal_keys::updated_at.eq(Utc::now().naive_utc()),
            ))
            .execute(conn)
            .map(drop)
    }
}

/// The personal keys: stored wrapped, unlocked ones cached in memory. Cheap to clone.
#[derive(Clone)]
pub struct PersonalKeys {
    db: Db,
    hasher: PasswordHasher,
    unlocked: moka::sync::Cache<i64, Arc<PersonalKey>>,
    idle: Duration,
}

impl PersonalKeys {
    pub fn new(db: Db, hasher: PasswordHasher, idle: Duration) -> Self {
        Self {
            db,
            hasher,
            unlocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(idle)
                .build(),
            idle,
        }
    }

    /// How long an unlocked key stays in memory without use.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// `user_id`'s unlocked key, if it is unlocked on this node (and counts as a use).
    pub fn key(&self, user_id: i64) -> Option<Arc<PersonalKey>> {
        self.unlocked.get(&user_id)
    }

    pub fn is_unlocked(&self, user_id: i64) -> bool {
        self.unlocked.contains_key(&user_id)
    }

    /// Drops the unlocked key from memory (sign-out, password change, account deletion).
    pub fn lock(&self, user_id: i64) {
        self.unlocked.invalidate(&user_id);
    }

    /// Whether `user_id` has set up a personal key (used private conversations).
    pub async fn exists(&self, user_id: i64) -> Result<bool, DbError> {
        self.db
            .run(move |conn| {
                diesel::select(diesel::dsl::exists(personal_keys::table.find(user_id)))
                    .get_result(conn)
                    .map_err(DbError::from)
            })
            .await
    }

    /// Unlocks `user_id`'s key with their password — made on first use (then `true`). The
    /// caller has checked that the password is the account's (`LoginService::reauthenticate`).
    pub async fn unlock(
        &self,
        user_id: i64,
        password: SecretString,
    ) -> Result<bool, PersonalKeyError> {
        let (key, created) = match self.stored(user_id).await? {
            Some(stored) => (self.open(user_id, &password, stored).await?, false),
            None => self.create(user_id, &password).await?,
        };
        self.unlocked
            .insert(user_id, Arc::new(PersonalKey::new(user_id, &key)));
        Ok(created)
    }

    /// The key re-wrapped under a new password (both known: a password change), to store
    /// with [`Rewrapped::store`] in the transaction that changes the password — so the two
    /// never disagree. `None` for someone without a personal key.
    pub async fn rewrap(
        &self,
        user_id: i64,
        old: SecretString,
        new: SecretString,
    ) -> Result<Option<Rewrapped>, PersonalKeyError> {
        let Some(stored) = self.stored(user_id).await? else {
            return Ok(None);
        };
        let key = self.open(user_id, &old, stored).await?;
        let (salt, wrapped) = self.seal(user_id, &new, &key).await?;
        Ok(Some(Rewrapped {
            user_id,
            salt,
            wrapped,
        }))
    }

    async fn stored(&self, user_id: i64) -> Result<Option<StoredKey>, DbError> {
        self.db
            .run(move |conn| {
                personal_keys::table
                    .find(user_id)
                    .select((
                        personal_keys::salt,
                        personal_keys::m_cost,
                        personal_keys::t_cost,
                        personal_keys::p_cost,
                        personal_keys::wrapped,
                    ))
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await
    }

    async fn open(
        &self,
        user_id: i64,
        password: &SecretString,
        (salt, m, t, p, wrapped): StoredKey,
    ) -> Result<DataKey, PersonalKeyError> {
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| PersonalKeyError::WrongPassword)?;
        let costs = (
            u32::try_from(m).unwrap_or(MEMORY_KIB),
            u32::try_from(t).unwrap_or(ITERATIONS),
            u32::try_from(p).unwrap_or(PARALLELISM),
        );
        let kek = self
            .hasher
            .admit()?
            .derive_key(password.clone(), salt, costs)
            .await?;
        let cipher = PersonalKey::new(user_id, &kek).cipher;
        open_key(&cipher, &wrapped, &wrap_context(user_id))
            .map_err(|_| PersonalKeyError::WrongPassword)
    }

    /// A fresh salt and `key` wrapped by the key `password` derives with it.
    async fn seal(
        &self,
        user_id: i64,
        password: &SecretString,
        key: &DataKey,
    ) -> Result<(String, String), PersonalKeyError> {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let kek = self
            .hasher
            .admit()?
            .derive_key(
                password.clone(),
                salt.clone(),
                (MEMORY_KIB, ITERATIONS, PARALLELISM),
            )
            .await?;
        let cipher = PersonalKey::new(user_id, &kek).cipher;
        Ok((
            STANDARD.encode(salt),
            seal_key(&cipher, key, &wrap_context(user_id)),
        ))
    }

    /// A new key for `user_id` and `true`, or (when another unlock made one at the same
    /// moment) theirs and `false`.
    async fn create(
        &self,
        user_id: i64,
        password: &SecretString,
    ) -> Result<(DataKey, bool), PersonalKeyError> {
        let key = new_data_key();
        let (salt, wrapped) = self.seal(user_id, password, &key).await?;
        let inserted = self
            .db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                crate::db::unless_taken(
                    diesel::insert_into(personal_keys::table)
                        .values((
                            personal_keys::user_id.eq(user_id),
                            personal_keys::salt.eq(salt),
                            personal_keys::m_cost.eq(MEMORY_KIB as i32),
                            personal_keys::t_cost.eq(ITERATIONS as i32),
                            personal_keys::p_cost.eq(PARALLELISM as i32),
                            personal_keys::wrapped.eq(wrapped),
                            personal_keys::created_at.eq(now),
                            personal_keys::updated_at.eq(now),
                        ))
                        .execute(conn),
                )
                // `None`: two unlocks at once; the other one's key stands.
                .map(|inserted| inserted.is_some())
                .map_err(DbError::from)
            })
            .await?;
        if inserted {
            return Ok((key, true));
        }
        let stored = self
            .stored(user_id)
            .await?
            .ok_or(PersonalKeyError::WrongPassword)?;
        Ok((self.open(user_id, password, stored).await?, false))
    }
}

/// Erases `user_id`'s personal key and everything only it could open: the data keys, messages
/// and index entries of their private rooms (a password reset; account deletion). The rooms
/// stay, empty. Returns how many rooms lost their history.
pub fn erase(conn: &mut DbConnection, user_id: i64) -> QueryResult<usize> {
    use crate::schema::conversation_keys;
    let rooms: Vec<i64> = conversation_keys::table
        .filter(conversation_keys::kek_id.eq(kek_id(user_id)))
        .select(conversation_keys::room_id)
        .load(conn)?;
    crate::history::erase_rooms(conn, &rooms)?;
    diesel::delete(personal_keys::table.find(user_id)).execute(conn)?;
    Ok(rooms.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_ids_name_their_owner() {
        assert_eq!(owner_of(&kek_id(42)), Some(42));
        assert_eq!(owner_of("local:abcd"), None);
        assert_eq!(owner_of("user:x"), None);
    }

    #[test]
    fn a_personal_key_opens_only_its_owners_wraps() {
        let ada = PersonalKey::new(1, &new_data_key());
        let eve = PersonalKey::new(2, &new_data_key());
        let room_key = new_data_key();
        let wrapped = ada.wrap(&room_key, b"room:9");
        assert_eq!(wrapped.kek_id, "user:1");
        let opened = ada
            .unwrap(&wrapped, b"room:9")
            .expect("the owner's key opens");
        assert_eq!(opened.expose_secret(), room_key.expose_secret());
        assert!(ada.unwrap(&wrapped, b"room:8").is_err());
        assert!(matches!(
            eve.unwrap(&wrapped, b"room:9"),
            Err(KeyError::UnknownKek(_))
        ));
    }
}
