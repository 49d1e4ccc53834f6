//! Passwords: the policy a new password must meet, and argon2id hashing.
//!
//! Hashing costs ~20–35 ms of CPU and 19 MiB of memory (OWASP's argon2id minimum: m=19 MiB,
//! t=2, p=1). It runs on its own pool of `accounts.hash_concurrency` threads (rayon) with a
//! bounded queue of `accounts.hash_queue` waiters; past that, callers get `HashError::Busy` at
//! once (429) instead of piling up.
//!
//! The hashing threads run at the lowest CPU priority (Linux `SCHED_IDLE`, else nice 19): a
//! login storm may use every idle cycle of every core, yet any other request that becomes
//! runnable gets the CPU first, so the rest of the server keeps its latency. (On 2 cores both
//! "hash at full speed" and "keep other requests fast" are only possible this way.)
//!
//! Each hashing thread keeps its 19 MiB of argon2 working memory between hashes and gives it
//! back after `SCRATCH_IDLE` without one. A fresh allocation per hash costs the kernel ~4,900
//! page faults to map and zero it and an unmap after: measured in a login storm, 40% of the
//! hashing thread's time went there (docs/benchmarks.md, login storm). The kept memory is
//! zeroed when it is given back.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHasher as _, Version};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Semaphore;
use zeroize::Zeroize as _;

use super::Email;

/// OWASP Password Storage Cheat Sheet, argon2id minimum.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;
/// Long enough for any passphrase; bounds the work an attacker can hand the hasher.
pub const MAX_LENGTH: usize = 1_024;

/// Common passwords refused outright; compared case-insensitively.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("password: must be at least {0} characters")]
    TooShort(usize),
    #[error("password: must be at most {MAX_LENGTH} characters")]
    TooLong,
    #[error("password: is one of the most common passwords; choose another")]
    Common,
    #[error("password: must not be your email address")]
    SameAsEmail,
}

impl PolicyError {
    /// A stable code for the problem, for pages and clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "too_short",
            Self::TooLong => "too_long",
            Self::Common => "common",
            Self::SameAsEmail => "same_as_email",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    min_length: usize,
}

impl PasswordPolicy {
    pub fn new(min_length: usize) -> Self {
        Self { min_length }
    }

    /// Checks a new password. Length counts characters, not bytes, as people do.
    pub fn check(&self, password: &SecretString, email: &Email) -> Result<(), PolicyError> {
        let password = password.expose_secret();
        let length = password.chars().count();
        if length < self.min_length {
            return Err(PolicyError::TooShort(self.min_length));
        }
        if length > MAX_LENGTH {
            return Err(PolicyError::TooLong);
        }
        let lowered = password.to_lowercase();
        if COMMON_PASSWORDS
            .lines()
            .any(|common| common.trim() == lowered)
        {
            return Err(PolicyError::Common);
        }
        let local_part = email.as_str().split('@').next().unwrap_or_default();
        if lowered == email.as_str() || lowered == local_part {
            return Err(PolicyError::SameAsEmail);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are running or waiting; try again shortly.
    #[error("the server is busy checking passwords; try again in a moment")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Hashes and verifies passwords with a cap on concurrent work. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    pool: Arc<rayon::ThreadPool>,
    waiting: Arc<Semaphore>,
}

impl PasswordHasher {
    /// `concurrency` hashes at once (0: one per core), `queue` more may wait.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(concurrency)
                .thread_name(|i| format!("argon2-{i}"))
                .start_handler(|_| lower_priority())
                .build()
                // Only fails when the OS refuses to start threads at all.
                .expect("start the password hashing threads"),
        );
        // Outside a runtime (a one-shot CLI command) the process ends before memory could be
        // idle for long.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&pool);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SCRATCH_IDLE / 2);
                loop {
                    every.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.spawn_broadcast(|_| release_idle_scratch(SCRATCH_IDLE));
                }
            });
        }
        Self {
            pool,
            waiting: Arc::new(Semaphore::new(concurrency + queue)),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with a fresh random salt.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.admit()?.hash(password).await
    }

    /// True when `password` matches `phc`. The parameters come from the stored hash, so hashes
    /// made with older parameters keep working.
    pub async fn verify(&self, password: SecretString, phc: String) -> Result<bool, HashError> {
        self.admit()?.verify(password, phc).await
    }

    /// A place among the running and queued hashes, or `Busy` at once. Take it before any
    /// other work on a request that will hash, so a refused request costs next to nothing
    /// (no database read for a sign-in that would be turned away anyway).
    pub fn admit(&self) -> Result<Admitted, HashError> {
        // Holding a `waiting` permit from arrival to completion bounds running + queued work.
        let permit = self.waiting.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("password_hash_rejected_total").increment(1);
            HashError::Busy
        })?;
        Ok(Admitted {
            pool: self.pool.clone(),
            _permit: permit,
        })
    }
}

/// Admission to the hashing pool (see [`PasswordHasher::admit`]); the place is given back when
/// this is dropped. Several hashes may run under one admission, one after the other.
pub struct Admitted {
    pool: Arc<rayon::ThreadPool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Admitted {
    /// See [`PasswordHasher::hash`].
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.run(move || {
            argon2()?
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        })
        .await
    }

    /// See [`PasswordHasher::verify`].
    pub async fn verify(&self, password: SecretString, phc: String) -> Result<bool, HashError> {
        self.run(move || verify_phc(password.expose_secret().as_bytes(), &phc))
            .await
    }

    /// A 32-byte key derived from `password` with argon2id (raw output, not a PHC string):
    /// the key-encryption key of a person's private conversations. The cost parameters are
    /// stored with the salt, so keys derived with older parameters still open.
    pub async fn derive_key(
        &self,
        password: SecretString,
        salt: Vec<u8>,
        costs: (u32, u32, u32),
    ) -> Result<secrecy::SecretBox<[u8; 32]>, HashError> {
        self.run(move || {
            let (m, t, p) = costs;
            let params =
                Params::new(m, t, p, Some(32)).map_err(|e| HashError::Failed(e.to_string()))?;
            let mut key = Box::new([0u8; 32]);
            let blocks = params.block_count();
            let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            with_scratch(blocks, |memory| {
                argon2.hash_password_into_with_memory(
                    password.expose_secret().as_bytes(),
                    &salt,
                    key.as_mut(),
                    memory,
                )
            })
            .map_err(|e| HashError::Failed(e.to_string()))?;
            Ok(secrecy::SecretBox::new(key))
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        self.pool.spawn(move || {
            let _entered = span.enter();
            let _ = done.send(work());
        });
        result
            .await
            .map_err(|_| HashError::Failed("the hashing thread stopped".to_owned()))?
    }
}

/// How long a hashing thread keeps its argon2 memory without using it.
const SCRATCH_IDLE: Duration = Duration::from_secs(30);

/// A hashing thread's argon2 working memory and when it was last used.
struct Scratch {
    blocks: Vec<Block>,
    used: Option<Instant>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            blocks: Vec::new(),
            used: None,
        })
    };
}

/// Runs `work` with at least `blocks` argon2 blocks of this thread's kept memory (grown when
/// a stored hash asks for more than any before). argon2 writes every block before reading it,
/// so what an earlier hash left there does not matter.
fn with_scratch<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.blocks.len() < blocks {
                scratch.blocks.zeroize();
                scratch.blocks = vec![Block::default(); blocks];
            }
            scratch.used = Some(Instant::now());
            work(&mut scratch.blocks)
        }
        // Not reentrant today; should it become so, the inner call gets memory of its own.
        Err(_) => work(&mut vec![Block::default(); blocks]),
    })
}

/// Zeroes and frees this thread's argon2 memory when it has not been used for `idle`.
fn release_idle_scratch(idle: Duration) {
    SCRATCH.with(|cell| {
        if let Ok(mut scratch) = cell.try_borrow_mut()
            && scratch.used.is_some_and(|used| used.elapsed() >= idle)
        {
            scratch.blocks.zeroize();
            scratch.blocks = Vec::new();
            scratch.used = None;
        }
    });
}

/// Whether `password` matches the PHC string `phc`, with the algorithm, version, cost and salt
/// it names (so hashes made with older parameters keep working), in this thread's kept memory.
/// The crate's `PasswordVerifier` does the same with a fresh allocation per call.
fn verify_phc(password: &[u8], phc: &str) -> Result<bool, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Failed(e.to_string());
    let stored = PasswordHash::new(phc).map_err(|e| failed(&e))?;
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return Err(HashError::Failed(
            "the stored password hash has no salt or no output".to_owned(),
        ));
    };
    let algorithm = Algorithm::try_from(stored.algorithm.as_str()).map_err(|e| failed(&e))?;
    let version = match stored.version {
        Some(version) => Version::try_from(version).map_err(|e| failed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&stored).map_err(|e| failed(&e))?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut computed = [0u8; Output::MAX_LENGTH];
    let computed = computed
        .get_mut(..expected.len())
        .ok_or_else(|| HashError::Failed("the stored password hash is too long".to_owned()))?;
    with_scratch(blocks, |memory| {
        argon2.hash_password_into_with_memory(password, salt, computed, memory)
    })
    .map_err(|e| failed(&e))?;
    let computed = Output::new(computed).map_err(|e| failed(&e))?;
    // `Output`'s equality is constant-time.
    Ok(&computed == expected)
}

/// Puts the calling (hashing) thread at the lowest CPU priority; see the module docs.
fn lower_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if idle.is_err()
        && let Err(e) =
            thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::warn!(error = ?e, "cannot lower the priority of password hashing threads");
    }
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| HashError::Failed(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email::parse("ada.lovelace@example.com").expect("valid")
    }

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn the_policy_names_what_is_wrong() {
        let policy = PasswordPolicy::new(10);
        assert_eq!(
            policy.check(&secret("short"), &email()),
            Err(PolicyError::TooShort(10))
        );
        assert_eq!(
            policy.check(&secret(&"x".repeat(1_025)), &email()),
            Err(PolicyError::TooLong)
        );
        assert_eq!(
            policy.check(&secret("Password123"), &email()),
            Err(PolicyError::Common)
        );
        assert_eq!(
            policy.check(&secret("Ada.Lovelace@example.com"), &email()),
            Err(PolicyError::SameAsEmail)
        );
        assert_eq!(
            policy.check(&secret("ada.lovelace"), &email()),
            Err(PolicyError::SameAsEmail)
        );
        assert_eq!(
            policy.check(&secret("correct horse battery staple"), &email()),
            Ok(())
        );
        // Characters, not bytes: ten accented letters are ten characters.
        assert_eq!(policy.check(&secret("éééééééééé"), &email()), Ok(()));
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = PasswordHasher::new(1, 1);
        let hash = hasher
            .hash(secret("correct horse battery staple"))
            .await
            .expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let again = hasher
            .hash(secret("correct horse battery staple"))
            .await
            .expect("hash");
        assert_ne!(hash, again, "every hash has its own salt");
        assert!(
            hasher
                .verify(secret("correct horse battery staple"), hash.clone())
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify(secret("wrong horse battery staple"), hash)
                .await
                .expect("verify")
        );
    }

    #[test]
    fn verification_keeps_its_memory_across_parameters_and_gives_it_back() {
        let hash = |algorithm, version, params| {
            Argon2::new(algorithm, version, params)
                .hash_password(b"kept memory")
                .expect("hash")
                .to_string()
        };
        let current = hash(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).expect("params"),
        );
        let smaller = hash(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(256, 1, 1, None).expect("params"),
        );
        let older = hash(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 3, 2, None).expect("params"),
        );
        // Small first, then a larger one (the memory grows), then small again in the larger
        // memory: each answer is right, whatever an earlier hash left behind.
        for phc in [&smaller, &current, &smaller, &older, &current] {
            assert_eq!(verify_phc(b"kept memory", phc).ok(), Some(true), "{phc}");
            assert_eq!(verify_phc(b"kept memorY", phc).ok(), Some(false), "{phc}");
        }
        let kept = SCRATCH.with(|s| s.borrow().blocks.len());
        assert_eq!(kept, (MEMORY_KIB / PARALLELISM * PARALLELISM) as usize);
        release_idle_scratch(Duration::from_secs(3_600));
        assert_eq!(
            SCRATCH.with(|s| s.borrow().blocks.len()),
            kept,
            "not idle yet"
        );
        release_idle_scratch(Duration::ZERO);
        assert_eq!(
            SCRATCH.with(|s| s.borrow().blocks.capacity()),
            0,
            "given back"
        );
        assert!(matches!(
            verify_phc(b"kept memory", "$argon2id$v=19$m=19456,t=2,p=1$not-base64!"),
            Err(HashError::Failed(_))
        ));
        assert!(matches!(
            verify_phc(b"kept memory", "$argon2id$v=19$m=19456,t=2,p=1"),
            Err(HashError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let hasher = PasswordHasher::new(1, 1);
        let busy = hasher.clone();
        // One running and one waiting fill the hasher; a third caller is refused.
        let first = tokio::spawn({
            let h = hasher.clone();
            async move { h.hash(secret("correct horse battery staple")).await }
        });
        let second = tokio::spawn({
            let h = hasher.clone();
            async move { h.hash(secret("correct horse battery staple")).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let third = busy.hash(secret("correct horse battery staple")).await;
        assert!(matches!(third, Err(HashError::Busy)), "{third:?}");
        assert!(first.await.expect("join").is_ok());
        assert!(second.await.expect("join").is_ok());
    }
}
