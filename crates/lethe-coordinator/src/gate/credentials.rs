//! API tokens looked up by digest, with a short cache so that a busy worker fleet does not
//! read the credentials table on every call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lethe_store::{Credential, Store};
use tonic::Status;

/// How long a looked-up credential is believed without asking the database again: the most
/// a revocation takes to reach every replica.
const CREDENTIAL_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: usize = 10_000;

/// Credentials by token digest, each believed for [`CREDENTIAL_TTL`].
#[derive(Default)]
pub(crate) struct Credentials {
    cache: Mutex<HashMap<[u8; 32], (Credential, Instant)>>,
}

impl Credentials {
    pub(crate) async fn lookup(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<Option<Credential>, Status> {
        let digest = lethe_store::token_digest(token);
        if let Some((credential, at)) = self.cache.lock().expect("cache lock").get(&digest) {
            if at.elapsed() < CREDENTIAL_TTL {
                return Ok(Some(credential.clone()));
            }
        }
        let found = store
            .credential_for_token(token)
            .await
            .map_err(crate::status::from_store)?;
        if let Some(credential) = &found {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(digest, (credential.clone(), Instant::now()));
        }
        Ok(found)
    }
}
