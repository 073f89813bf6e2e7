//! Users, tokens and who may do what: authentication by token hash, the admin bootstrap,
//! user and token management, and the ownership checks every user action goes through.
//!
//! The rules, in one place:
//! - a **user** token acts as its user: tasks and batches are theirs to see and change if they
//!   own them; an admin sees and changes everything. Tasks and batches from before herd had
//!   users (owner `None`) are the admins'. A batch is owned by the user whose submit created it
//!   (or first queued into it, when a worker's hello created it); another user's submit into
//!   it is refused, with a message saying so.
//! - a **worker** token opens worker sessions and nothing else, for one batch if it says so;
//! - admins alone manage users, create tokens and delete workers; any user may list and
//!   revoke their own tokens.
//!
//! Secrets never enter the state: the caller hashes a presented token (SHA-256) and looks the
//! hash up; a new token's secret is made and hashed by the queue, which passes the hash in.

use std::sync::Arc;

use herd_proto::access::{Identity, TokenInfo, TokenKind, TokenRequest, UserInfo, UserName};
use herd_proto::{BatchName, TaskId, Timestamp};

use super::{Change, State};
use crate::Error;
use crate::store::{StoreError, TokenRow, UserRow};

/// The SHA-256 of a secret (a token, a worker's resume key), lowercase hex: what is kept of it.
pub fn digest(secret: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in hash.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}

/// A user's id (never reused; names are shown, ids are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u64);

/// The name of the user the admin bootstrap creates.
pub const BOOTSTRAP_ADMIN: &str = "admin";

pub(crate) struct User {
    pub name: UserName,
    pub admin: bool,
    pub created_at: Timestamp,
}

pub(crate) struct Token {
    pub user: UserId,
    pub kind: TokenKind,
    pub batch: Option<BatchName>,
    pub label: String,
    pub hash: Arc<str>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// Kept in memory only: a write per call would cost more than it is worth.
    pub last_used_at: Option<Timestamp>,
}

/// Who is calling: what a valid token stands for, found by [`State::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token: u64,
    /// Its user.
    pub user: UserId,
    /// Whether that user is an admin.
    pub admin: bool,
    /// What the token may do.
    pub kind: TokenKind,
    /// A worker token limited to one batch.
    pub batch: Option<BatchName>,
}

impl Caller {
    /// Whether the caller may see and act on something owned by `owner`.
    pub fn may_access(&self, owner: Option<UserId>) -> bool {
        self.admin || owner == Some(self.user)
    }
}

/// Refuses the caller unless an admin, naming `what` they tried.
pub fn require_admin(caller: &Caller, what: &str) -> Result<(), Error> {
    if caller.admin {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "only an admin may {what}; ask one of the server's admins"
        )))
    }
}

impl State {
    /// The caller a token hash stands for; `None` if no token has that hash or it was
    /// revoked. Records the use.
    pub fn authenticate(&mut self, hash: &str) -> Option<Caller> {
        let now = self.clock.now();
        let id = *self.token_index.get(hash)?;
        let token = self.tokens.get_mut(&id)?;
        if token.revoked_at.is_some() {
            return None;
        }
        token.last_used_at = Some(now);
        let user = self.users.get(&token.user)?;
        Some(Caller {
            token: id,
            user: token.user,
            admin: user.admin,
            kind: token.kind,
            batch: token.batch.clone(),
        })
    }

    /// On a server that has no user yet: creates the admin user and its first token (with
    /// the hash given). Returns whether it did.
    pub fn bootstrap(&mut self, hash: &str, change: &mut Change) -> bool {
        if !self.users.is_empty() {
            return false;
        }
        let name = UserName::new(BOOTSTRAP_ADMIN).expect("a valid user name");
        let user = self.insert_user(name, true, change);
        self.insert_token(
            user,
            TokenKind::User,
            None,
            "bootstrap".to_owned(),
            hash,
            change,
        );
        true
    }

    fn insert_user(&mut self, name: UserName, admin: bool, change: &mut Change) -> UserId {
        let id = UserId(self.next_user_id);
        self.next_user_id += 1;
        self.users.insert(
            id,
            User {
                name,
                admin,
                created_at: self.clock.now(),
            },
        );
        change.user(id);
        change.counters();
        id
    }

    fn insert_token(
        &mut self,
        user: UserId,
        kind: TokenKind,
        batch: Option<BatchName>,
        label: String,
        hash: &str,
        change: &mut Change,
    ) -> u64 {
        let id = self.next_token_id;
        self.next_token_id += 1;
        let hash: Arc<str> = hash.into();
        self.token_index.insert(hash.clone(), id);
        self.tokens.insert(
            id,
            Token {
                user,
                kind,
                batch,
                label,
                hash,
                created_at: self.clock.now(),
                revoked_at: None,
                last_used_at: None,
            },
        );
        change.token(id);
        change.counters();
        id
    }

    fn user_named(&self, name: &UserName) -> Option<UserId> {
        self.users
            .iter()
            .find(|(_, user)| &user.name == name)
            .map(|(id, _)| *id)
    }

    /// Adds a user with a first user token (hash given); admins only.
    pub fn add_user(
        &mut self,
        caller: &Caller,
        name: UserName,
        admin: bool,
        hash: &str,
        change: &mut Change,
    ) -> Result<TokenInfo, Error> {
        require_admin(caller, "add users")?;
        if self.user_named(&name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "user `{name}` exists already; give them another token with `herd token create --user {name}`"
            )));
        }
        let user = self.insert_user(name, admin, change);
        let token = self.insert_token(
            user,
            TokenKind::User,
            None,
            "first".to_owned(),
            hash,
            change,
        );
        Ok(self.token_info(token).expect("just inserted"))
    }

    /// Creates a token (hash given); admins only.
    pub fn create_token(
        &mut self,
        caller: &Caller,
        request: TokenRequest,
        hash: &str,
        change: &mut Change,
    ) -> Result<TokenInfo, Error> {
        require_admin(caller, "create tokens")?;
        request.check()?;
        let user = match &request.user {
            None => caller.user,
            Some(name) => self.user_named(name).ok_or_else(|| {
                Error::Invalid(herd_proto::Error::invalid(
                    "user",
                    format!("there is no user `{name}`; add them with `herd user add {name}`"),
                ))
            })?,
        };
        let token = self.insert_token(
            user,
            request.kind,
            request.batch,
            request.label,
            hash,
            change,
        );
        Ok(self.token_info(token).expect("just inserted"))
    }

    /// Revokes a token: it is refused from now on, and the worker sessions opened with it are
    /// closed. Admins, or the token's own user.
    pub fn revoke_token(
        &mut self,
        caller: &Caller,
        id: u64,
        change: &mut Change,
    ) -> Result<TokenInfo, Error> {
        let now = self.clock.now();
        let not_found = || {
            Error::Invalid(herd_proto::Error::invalid(
                "token",
                format!("there is no token {id}; `herd token list` shows them"),
            ))
        };
        let token = self.tokens.get_mut(&id).ok_or_else(not_found)?;
        if !caller.may_access(Some(token.user)) {
            return Err(not_found());
        }
        if token.revoked_at.is_none() {
            token.revoked_at = Some(now);
            change.token(id);
            let sessions: Vec<_> = self
                .workers
                .iter()
                .filter(|(_, worker)| worker.token == Some(id))
                .filter_map(|(worker_id, worker)| worker.address(*worker_id))
                .collect();
            for address in sessions {
                change.hangup(address);
                self.stop_worker(address.worker, "its worker's token was revoked", change);
            }
        }
        Ok(self.token_info(id).expect("present above"))
    }

    /// Every user; admins only.
    pub fn user_infos(&self, caller: &Caller) -> Result<Vec<UserInfo>, Error> {
        require_admin(caller, "list users")?;
        Ok(self
            .users
            .iter()
            .map(|(id, user)| UserInfo {
                name: user.name.clone(),
                admin: user.admin,
                created_at: user.created_at,
                active_tokens: self
                    .tokens
                    .values()
                    .filter(|token| token.user == *id && token.revoked_at.is_none())
                    .count() as u32,
            })
            .collect())
    }

    /// Tokens, optionally of one user: a user sees their own, an admin every one.
    pub fn token_infos(
        &self,
        caller: &Caller,
        user: Option<&UserName>,
    ) -> Result<Vec<TokenInfo>, Error> {
        let only = match user {
            Some(name) => Some(self.user_named(name).ok_or_else(|| {
                Error::Invalid(herd_proto::Error::invalid(
                    "user",
                    format!("there is no user `{name}`"),
                ))
            })?),
            None if caller.admin => None,
            None => Some(caller.user),
        };
        if let Some(user) = only
            && !caller.may_access(Some(user))
        {
            return Err(Error::Forbidden(
                "only an admin may list another user's tokens".to_owned(),
            ));
        }
        Ok(self
            .tokens
            .keys()
            .filter(|id| only.is_none_or(|user| self.tokens[id].user == user))
            .filter_map(|id| self.token_info(*id))
            .collect())
    }

    fn token_info(&self, id: u64) -> Option<TokenInfo> {
        let token = self.tokens.get(&id)?;
        Some(TokenInfo {
            id,
            user: self.users.get(&token.user)?.name.clone(),
            kind: token.kind,
            batch: token.batch.clone(),
            label: token.label.clone(),
            created_at: token.created_at,
            revoked_at: token.revoked_at,
            last_used_at: token.last_used_at,
        })
    }

    /// An admin, as a caller, for what the server does on its own behalf (the local worker's
    /// token of `herd up`).
    pub fn any_admin(&self) -> Option<Caller> {
        let (id, _) = self.users.iter().find(|(_, user)| user.admin)?;
        Some(Caller {
            token: 0,
            user: *id,
            admin: true,
            kind: TokenKind::User,
            batch: None,
        })
    }

    /// Who the caller is.
    pub fn identity(&self, caller: &Caller) -> Identity {
        Identity {
            user: self.users[&caller.user].name.clone(),
            admin: caller.admin,
            token_id: caller.token,
            kind: caller.kind,
            batch: caller.batch.clone(),
        }
    }

    /// The name of the user `owner`, for views.
    pub(super) fn owner_name(&self, owner: Option<UserId>) -> Option<String> {
        owner
            .and_then(|id| self.users.get(&id))
            .map(|user| user.name.to_string())
    }

    /// Checks that the caller may see and act on task `id`.
    pub fn check_task(&self, caller: &Caller, id: TaskId) -> Result<(), Error> {
        let task = self.tasks.get(&id).ok_or(Error::TaskNotFound(id))?;
        if caller.may_access(task.owner) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "task {id} belongs to another user; `herd task list` shows yours"
            )))
        }
    }

    /// Checks that the caller may see and act on batch `name`.
    pub fn check_batch(&self, caller: &Caller, name: &BatchName) -> Result<(), Error> {
        let batch = self
            .batches
            .get(name)
            .ok_or_else(|| Error::BatchNotFound(name.clone()))?;
        if caller.may_access(batch.owner) {
            Ok(())
        } else {
            Err(self.batch_taken(name, batch.owner))
        }
    }

    /// Checks that the caller may queue into each of `batches` (a batch that another user
    /// owns is refused), before anything is queued.
    pub(super) fn check_submit<'a>(
        &self,
        caller: &Caller,
        batches: impl Iterator<Item = &'a BatchName>,
    ) -> Result<(), Error> {
        for name in batches {
            if let Some(batch) = self.batches.get(name)
                && batch.owner.is_some()
                && !caller.may_access(batch.owner)
            {
                return Err(self.batch_taken(name, batch.owner));
            }
        }
        Ok(())
    }

    fn batch_taken(&self, name: &BatchName, owner: Option<UserId>) -> Error {
        let owner = self
            .owner_name(owner)
            .map_or_else(|| "an admin".to_owned(), |name| format!("user `{name}`"));
        Error::Forbidden(format!(
            "batch `{name}` belongs to {owner}; batch names are shared by every user of this server: choose another with -b/--batch"
        ))
    }

    /// The row of user `id`, for the journal.
    pub fn user_row(&self, id: UserId) -> Option<UserRow> {
        let user = self.users.get(&id)?;
        Some(UserRow {
            id: id.0 as i64,
            name: user.name.to_string(),
            admin: user.admin,
            created_at: user.created_at.0,
        })
    }

    /// The row of token `id`, for the journal.
    pub fn token_row(&self, id: u64) -> Option<TokenRow> {
        let token = self.tokens.get(&id)?;
        Some(TokenRow {
            id: id as i64,
            user_id: token.user.0 as i64,
            kind: token.kind.as_str().to_owned(),
            batch: token.batch.as_ref().map(BatchName::to_string),
            label: token.label.clone(),
            hash: token.hash.to_string(),
            created_at: token.created_at.0,
            revoked_at: token.revoked_at.map(Timestamp::millis),
        })
    }

    /// The owner a stored row names, if that user exists (a row naming a user that does not
    /// exist falls to the admins, like a row from before herd had users).
    pub(super) fn restored_owner(&self, owner: Option<i64>) -> Option<UserId> {
        owner
            .map(|id| UserId(id as u64))
            .filter(|id| self.users.contains_key(id))
    }

    /// Restores users and tokens from their rows.
    pub(super) fn restore_access(
        &mut self,
        users: Vec<UserRow>,
        tokens: Vec<TokenRow>,
    ) -> Result<(), StoreError> {
        for row in users {
            let name = UserName::new(row.name)
                .map_err(|error| StoreError::corrupt(format!("user row {}", row.id), error))?;
            self.next_user_id = self.next_user_id.max(row.id as u64 + 1);
            self.users.insert(
                UserId(row.id as u64),
                User {
                    name,
                    admin: row.admin,
                    created_at: Timestamp(row.created_at),
                },
            );
        }
        for row in tokens {
            let what = |column: &str| format!("token row {}, column {column}", row.id);
            let kind = row
                .kind
                .parse()
                .map_err(|error| StoreError::corrupt(what("kind"), error))?;
            let batch = row
                .batch
                .map(BatchName::new)
                .transpose()
                .map_err(|error| StoreError::corrupt(what("batch"), error))?;
            let user = UserId(row.user_id as u64);
            if !self.users.contains_key(&user) {
                return Err(StoreError::corrupt(
                    what("user_id"),
                    format!("no user {}", row.user_id),
                ));
            }
            let id = row.id as u64;
            self.next_token_id = self.next_token_id.max(id + 1);
            let hash: Arc<str> = row.hash.into();
            self.token_index.insert(hash.clone(), id);
            self.tokens.insert(
                id,
                Token {
                    user,
                    kind,
                    batch,
                    label: row.label,
                    hash,
                    created_at: Timestamp(row.created_at),
                    revoked_at: row.revoked_at.map(Timestamp),
                    last_used_at: None,
                },
            );
        }
        Ok(())
    }
}
