//! Users, tokens and who is calling: the domain side of the `Access` service.
//!
//! Every call to a herd server carries a bearer token (`authorization: Bearer herd_...`). A
//! token is 32 random bytes, base64url-encoded after the prefix [`TOKEN_PREFIX`]; the server
//! keeps only its SHA-256 and shows the secret once, when it is created. Two kinds:
//! - a **user** token calls the `Queue` and `Access` services as its user: a user sees and acts
//!   on their own tasks and batches only, an admin on everything;
//! - a **worker** token opens worker sessions and nothing else, optionally for one batch only.
//!
//! The types here are plain, validated values; the server's state machine decides who may do
//! what, and [`crate::convert`] turns them into protobuf and back.

use std::fmt;

use serde::Serialize;

use crate::{BatchName, Error, Timestamp};

/// What every token starts with, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "herd_";

/// The longest token text accepted anywhere (a real one is 48 characters).
pub const MAX_TOKEN_CHARS: usize = 256;

/// The longest user name.
pub const MAX_USER_NAME_CHARS: usize = 64;

/// The longest token label.
pub const MAX_LABEL_CHARS: usize = 200;

/// Checks a token's text before it is used or sent: bounded, printable ASCII, no spaces (it
/// travels in an HTTP header). Says nothing about whether the server knows it.
pub fn check_token_text(token: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Err(Error::invalid("token", "the token is empty"));
    }
    if token.len() > MAX_TOKEN_CHARS {
        return Err(Error::invalid(
            "token",
            format!(
                "the token is {} characters long; herd tokens have at most {MAX_TOKEN_CHARS}",
                token.len()
            ),
        ));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(Error::invalid(
            "token",
            "the token holds spaces, control or non-ASCII characters; copy it again as printed by `herd token create`",
        ));
    }
    Ok(())
}

/// A token held by a client or a worker: checked with [`check_token_text`] when made, and
/// never shown by `Debug` (configurations holding one can be logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Checks `token` and wraps it; surrounding whitespace (a file's final newline) is dropped.
    pub fn new(token: &str) -> Result<Self, Error> {
        let token = token.trim();
        check_token_text(token)?;
        Ok(Secret(token.to_owned()))
    }

    /// The token itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

/// Adds `authorization: Bearer TOKEN` to every call of a tonic client (streams included),
/// marked sensitive so that tonic and hyper never log it. [`Bearer::anonymous`] adds nothing
/// (the server then answers with how to get a token).
#[cfg(feature = "client")]
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

#[cfg(feature = "client")]
impl Bearer {
    /// The header for `token`.
    pub fn new(token: &Secret) -> Result<Self, Error> {
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", token.expose()).parse().map_err(|_| {
                Error::invalid("token", "the token cannot travel in an HTTP header")
            })?;
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }

    /// No header at all.
    pub fn anonymous() -> Self {
        Bearer(None)
    }
}

#[cfg(feature = "client")]
impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A user's name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Self, Error> {
        let text = text.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
        if text.is_empty() || text.chars().count() > MAX_USER_NAME_CHARS {
            return Err(Error::invalid(
                "user name",
                format!("a user name has 1 to {MAX_USER_NAME_CHARS} characters"),
            ));
        }
        if !text.chars().all(valid_char) || !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid(
                "user name",
                format!(
                    "`{}` is not a user name: use letters, digits, `.`, `_`, `@` and `-`, starting with a letter or digit",
                    text.escape_debug()
                ),
            ));
        }
        Ok(UserName(text))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Calls the `Queue` and `Access` services as its user.
    User,
    /// Opens worker sessions only.
    Worker,
}

impl TokenKind {
    /// `user` or `worker`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Worker => "worker",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for TokenKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "user" => Ok(TokenKind::User),
            "worker" => Ok(TokenKind::Worker),
            other => Err(Error::invalid(
                "token kind",
                format!(
                    "`{}` is not a token kind (user or worker)",
                    other.escape_debug()
                ),
            )),
        }
    }
}

/// Checks a token's label: at most [`MAX_LABEL_CHARS`], no control characters.
pub fn check_label(label: &str) -> Result<(), Error> {
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(Error::invalid(
            "label",
            format!("a token label has at most {MAX_LABEL_CHARS} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(Error::invalid(
            "label",
            "a token label holds no control characters (NUL, newlines, ...)",
        ));
    }
    Ok(())
}

/// Who a token belongs to, as `herd whoami` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The token's user (for a worker token: the admin who created it).
    pub user: UserName,
    /// Whether that user is an admin.
    pub admin: bool,
    /// The token's id.
    pub token_id: u64,
    /// What the token may do.
    pub kind: TokenKind,
    /// A worker token limited to one batch.
    pub batch: Option<BatchName>,
}

/// A user, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// Name.
    pub name: UserName,
    /// May see and do everything.
    pub admin: bool,
    /// When the user was added.
    pub created_at: Timestamp,
    /// Tokens not revoked.
    pub active_tokens: u32,
}

/// A token, as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Id, for `herd token revoke ID`.
    pub id: u64,
    /// Its user.
    pub user: UserName,
    /// What it may do.
    pub kind: TokenKind,
    /// A worker token limited to one batch.
    pub batch: Option<BatchName>,
    /// What it is for, as given at creation.
    pub label: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When it was last used (kept in memory; `None` after a restart until it is used).
    pub last_used_at: Option<Timestamp>,
}

/// A token just created, with its secret: shown once, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The token.
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer SECRET`.
    pub secret: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("NewToken")
            .field("info", &self.info)
            .field("secret", &"***")
            .finish()
    }
}

/// What `herd token create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Its user (`None`: the caller).
    pub user: Option<UserName>,
    /// What it may do.
    pub kind: TokenKind,
    /// Only for worker tokens: the one batch its workers may serve.
    pub batch: Option<BatchName>,
    /// What it is for.
    pub label: String,
}

impl TokenRequest {
    /// Checks the parts together.
    pub fn check(&self) -> Result<(), Error> {
        check_label(&self.label)?;
        if self.batch.is_some() && self.kind != TokenKind::Worker {
            return Err(Error::invalid(
                "batch",
                "only a worker token is limited to a batch (add --worker)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        for good in ["alice", "a", "bob.smith@lab-1", "x_y"] {
            assert!(UserName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-alice",
            "al ice",
            "al\0ice",
            "ålice",
            &"a".repeat(65),
            "a/b",
        ] {
            let error = UserName::new(bad).expect_err(bad).to_string();
            assert!(error.contains("user name"), "{error}");
        }
    }

    #[test]
    fn token_texts_are_checked_without_echoing_them() {
        assert!(check_token_text("herd_abcDEF-_123").is_ok());
        for bad in ["", "herd_ab cd", "herd_\0", "herd_é", &"x".repeat(257)] {
            let error = check_token_text(bad).expect_err("refused").to_string();
            assert!(error.contains("token"), "{error}");
            if bad.len() > 3 {
                assert!(
                    !error.contains(bad),
                    "the token must not be echoed: {error}"
                );
            }
        }
    }

    #[test]
    fn only_worker_tokens_have_a_batch() {
        let request = TokenRequest {
            user: None,
            kind: TokenKind::User,
            batch: Some(BatchName::new("b").expect("a batch name")),
            label: String::new(),
        };
        assert!(request.check().is_err());
        let worker = TokenRequest {
            kind: TokenKind::Worker,
            ..request
        };
        assert!(worker.check().is_ok());
        assert!(
            TokenRequest {
                label: "a\nb".to_owned(),
                ..worker
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn a_new_token_never_debugs_its_secret() {
        let token = NewToken {
            info: TokenInfo {
                id: 1,
                user: UserName::new("admin").expect("a name"),
                kind: TokenKind::User,
                batch: None,
                label: String::new(),
                created_at: Timestamp(0),
                revoked_at: None,
                last_used_at: None,
            },
            secret: "herd_verysecret".to_owned(),
        };
        assert!(!format!("{token:?}").contains("verysecret"));
    }
}
