//! Users and tokens between protobuf and [`crate::access`].

use crate::access::{
    Identity, NewToken, TokenInfo, TokenKind, TokenRequest, UserInfo, UserName, check_token_text,
};
use crate::{BatchName, Error, Timestamp, pb};

fn batch_from(text: Option<String>) -> Result<Option<BatchName>, Error> {
    text.map(BatchName::new).transpose()
}

impl From<&Identity> for pb::Identity {
    fn from(identity: &Identity) -> Self {
        pb::Identity {
            user: identity.user.to_string(),
            admin: identity.admin,
            token_id: identity.token_id,
            kind: identity.kind.as_str().to_owned(),
            batch: identity.batch.as_ref().map(BatchName::to_string),
        }
    }
}

impl TryFrom<pb::Identity> for Identity {
    type Error = Error;

    fn try_from(identity: pb::Identity) -> Result<Self, Error> {
        Ok(Identity {
            user: UserName::new(identity.user)?,
            admin: identity.admin,
            token_id: identity.token_id,
            kind: identity.kind.parse()?,
            batch: batch_from(identity.batch)?,
        })
    }
}

impl From<&UserInfo> for pb::User {
    fn from(user: &UserInfo) -> Self {
        pb::User {
            name: user.name.to_string(),
            admin: user.admin,
            created_at_ms: user.created_at.0,
            active_tokens: user.active_tokens,
        }
    }
}

impl TryFrom<pb::User> for UserInfo {
    type Error = Error;

    fn try_from(user: pb::User) -> Result<Self, Error> {
        Ok(UserInfo {
            name: UserName::new(user.name)?,
            admin: user.admin,
            created_at: Timestamp(user.created_at_ms),
            active_tokens: user.active_tokens,
        })
    }
}

impl From<&TokenInfo> for pb::TokenInfo {
    fn from(token: &TokenInfo) -> Self {
        pb::TokenInfo {
            id: token.id,
            user: token.user.to_string(),
            kind: token.kind.as_str().to_owned(),
            batch: token.batch.as_ref().map(BatchName::to_string),
            label: token.label.clone(),
            created_at_ms: token.created_at.0,
            revoked_at_ms: token.revoked_at.map(Timestamp::millis),
            last_used_at_ms: token.last_used_at.map(Timestamp::millis),
        }
    }
}

impl TryFrom<pb::TokenInfo> for TokenInfo {
    type Error = Error;

    fn try_from(token: pb::TokenInfo) -> Result<Self, Error> {
        Ok(TokenInfo {
            id: token.id,
            user: UserName::new(token.user)?,
            kind: token.kind.parse()?,
            batch: batch_from(token.batch)?,
            label: token.label,
            created_at: Timestamp(token.created_at_ms),
            revoked_at: token.revoked_at_ms.map(Timestamp),
            last_used_at: token.last_used_at_ms.map(Timestamp),
        })
    }
}

impl From<&NewToken> for pb::NewToken {
    fn from(token: &NewToken) -> Self {
        pb::NewToken {
            info: Some(pb::TokenInfo::from(&token.info)),
            secret: token.secret.clone(),
        }
    }
}

impl TryFrom<pb::NewToken> for NewToken {
    type Error = Error;

    fn try_from(token: pb::NewToken) -> Result<Self, Error> {
        check_token_text(&token.secret)?;
        Ok(NewToken {
            info: TokenInfo::try_from(token.info.ok_or(Error::MissingField("info"))?)?,
            secret: token.secret,
        })
    }
}

impl From<&TokenRequest> for pb::CreateTokenRequest {
    fn from(request: &TokenRequest) -> Self {
        pb::CreateTokenRequest {
            user: request.user.as_ref().map(UserName::to_string),
            worker: request.kind == TokenKind::Worker,
            batch: request.batch.as_ref().map(BatchName::to_string),
            label: request.label.clone(),
        }
    }
}

impl TryFrom<pb::CreateTokenRequest> for TokenRequest {
    type Error = Error;

    fn try_from(request: pb::CreateTokenRequest) -> Result<Self, Error> {
        let request = TokenRequest {
            user: request.user.map(UserName::new).transpose()?,
            kind: if request.worker {
                TokenKind::Worker
            } else {
                TokenKind::User
            },
            batch: batch_from(request.batch)?,
            label: request.label,
        };
        request.check()?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenInfo {
        TokenInfo {
            id: 7,
            user: UserName::new("alice").expect("a name"),
            kind: TokenKind::Worker,
            batch: Some(BatchName::new("b1").expect("a batch")),
            label: "fleet".to_owned(),
            created_at: Timestamp(1_000),
            revoked_at: Some(Timestamp(2_000)),
            last_used_at: None,
        }
    }

    #[test]
    fn access_types_round_trip() {
        let info = token();
        assert_eq!(
            TokenInfo::try_from(pb::TokenInfo::from(&info)).expect("decodes"),
            info
        );
        let new = NewToken {
            info: info.clone(),
            secret: "herd_abc".to_owned(),
        };
        assert_eq!(
            NewToken::try_from(pb::NewToken::from(&new)).expect("decodes"),
            new
        );
        let identity = Identity {
            user: info.user.clone(),
            admin: true,
            token_id: 7,
            kind: TokenKind::User,
            batch: None,
        };
        assert_eq!(
            Identity::try_from(pb::Identity::from(&identity)).expect("decodes"),
            identity
        );
        let request = TokenRequest {
            user: Some(info.user.clone()),
            kind: TokenKind::Worker,
            batch: info.batch.clone(),
            label: "x".to_owned(),
        };
        assert_eq!(
            TokenRequest::try_from(pb::CreateTokenRequest::from(&request)).expect("decodes"),
            request
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let mut bad = pb::TokenInfo::from(&token());
        bad.kind = "root".to_owned();
        assert!(TokenInfo::try_from(bad).is_err());
        let request = pb::CreateTokenRequest {
            user: Some("bad name".to_owned()),
            ..Default::default()
        };
        assert!(TokenRequest::try_from(request).is_err());
        let request = pb::CreateTokenRequest {
            batch: Some("b".to_owned()),
            worker: false,
            ..Default::default()
        };
        assert!(TokenRequest::try_from(request).is_err());
    }
}
