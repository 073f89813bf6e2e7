//! The [`Queue`]'s side of users and tokens: secrets are made and hashed here, outside the
//! state machine, which sees only hashes (see `state/access.rs` for who may do what).

use base64::Engine as _;
use herd_proto::access::{
    Identity, NewToken, TOKEN_PREFIX, TokenInfo, TokenKind, TokenRequest, UserInfo, UserName,
    check_token_text,
};

use super::Queue;
use super::state::{Caller, digest};
use crate::Error;

/// A new secret: [`TOKEN_PREFIX`] and 32 random bytes from the operating system, base64url.
pub fn new_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| Error::Entropy(error.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

impl Queue {
    /// Who a presented token stands for. The error says what is wrong without echoing the
    /// token.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, Error> {
        let Some(token) = token else {
            return Err(Error::Unauthenticated(
                "this herd server needs a token: set HERD_TOKEN, or run `herd login` (an admin creates tokens with `herd user add` or `herd token create`)".to_owned(),
            ));
        };
        check_token_text(token).map_err(|error| Error::Unauthenticated(error.to_string()))?;
        let hash = digest(token);
        self.shared
            .lock()
            .state
            .authenticate(&hash)
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the token is not valid on this server (unknown or revoked); ask an admin for a new one, then `herd login`".to_owned(),
                )
            })
    }

    /// Whether the server has no user yet (its first start, or a database from before herd
    /// had users).
    pub fn needs_bootstrap(&self) -> bool {
        self.shared.lock().state.users.is_empty()
    }

    /// Creates the admin user with `secret` as its first token, if there is no user yet;
    /// durable when this returns. Returns whether it did.
    pub async fn bootstrap(&self, secret: &str) -> Result<bool, Error> {
        let hash = digest(secret);
        self.mutate_durably(|state, change| Ok(state.bootstrap(&hash, change)))
            .await
    }

    /// Adds a user and makes their first token; admins only.
    pub async fn add_user(
        &self,
        caller: &Caller,
        name: UserName,
        admin: bool,
    ) -> Result<NewToken, Error> {
        let secret = new_secret()?;
        let hash = digest(&secret);
        let info = self
            .mutate_durably(|state, change| state.add_user(caller, name, admin, &hash, change))
            .await?;
        Ok(NewToken { info, secret })
    }

    /// Makes a token; admins only.
    pub async fn create_token(
        &self,
        caller: &Caller,
        request: TokenRequest,
    ) -> Result<NewToken, Error> {
        let secret = new_secret()?;
        let hash = digest(&secret);
        let info = self
            .mutate_durably(|state, change| state.create_token(caller, request, &hash, change))
            .await?;
        Ok(NewToken { info, secret })
    }

    /// Revokes a token (and closes the worker sessions opened with it).
    pub async fn revoke_token(&self, caller: &Caller, id: u64) -> Result<TokenInfo, Error> {
        self.mutate_durably(|state, change| state.revoke_token(caller, id, change))
            .await
    }

    /// Every user; admins only.
    pub fn users(&self, caller: &Caller) -> Result<Vec<UserInfo>, Error> {
        self.shared.lock().state.user_infos(caller)
    }

    /// Tokens: the caller's own, or any user's (every one without `user`) for an admin.
    pub fn tokens(
        &self,
        caller: &Caller,
        user: Option<&UserName>,
    ) -> Result<Vec<TokenInfo>, Error> {
        self.shared.lock().state.token_infos(caller, user)
    }

    /// Who the caller is.
    pub fn identity(&self, caller: &Caller) -> Identity {
        self.shared.lock().state.identity(caller)
    }

    /// A worker token for an in-process worker of this server (`herd up`, tests), made as if
    /// an admin had asked for it.
    pub async fn local_worker_token(&self, label: &str) -> Result<NewToken, Error> {
        self.token_of_an_admin(TokenKind::Worker, label).await
    }

    /// A new user token of an admin, for `herd server --new-admin-token` (the way back in when
    /// every admin token is lost or revoked; it takes access to the server's data directory).
    pub async fn new_admin_token(&self, label: &str) -> Result<NewToken, Error> {
        self.token_of_an_admin(TokenKind::User, label).await
    }

    async fn token_of_an_admin(&self, kind: TokenKind, label: &str) -> Result<NewToken, Error> {
        let admin = self.shared.lock().state.any_admin().ok_or_else(|| {
            Error::Forbidden("the server has no admin to make a token for".to_owned())
        })?;
        self.create_token(
            &admin,
            TokenRequest {
                user: None,
                kind,
                batch: None,
                label: label.to_owned(),
            },
        )
        .await
    }
}
