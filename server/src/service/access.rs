//! The `Access` service: who am I, users and tokens. Thin like the others: the caller comes
//! from the [`super::Authenticator`], the rules are the queue's.

use std::sync::Arc;

use herd_proto::access::{TokenRequest, UserName};
use herd_proto::pb;
use tonic::{Request, Response, Status};

use super::{caller, invalid, status_of};
use crate::queue::Queue;

/// The `Access` service.
pub struct AccessService {
    queue: Arc<Queue>,
}

impl AccessService {
    /// Serves `queue`.
    pub fn new(queue: Arc<Queue>) -> Self {
        AccessService { queue }
    }
}

#[tonic::async_trait]
impl pb::access_server::Access for AccessService {
    async fn who_am_i(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::Identity>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::Identity::from(
            &self.queue.identity(&caller),
        )))
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::NewToken>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let name = UserName::new(request.name).map_err(invalid)?;
        let token = self
            .queue
            .add_user(&caller, name, request.admin)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::NewToken::from(&token)))
    }

    async fn list_users(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&request)?;
        let users = self.queue.users(&caller).map_err(status_of)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(pb::User::from).collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::NewToken>, Status> {
        let caller = caller(&request)?;
        let request = TokenRequest::try_from(request.into_inner()).map_err(invalid)?;
        let token = self
            .queue
            .create_token(&caller, request)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::NewToken::from(&token)))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        let user = request
            .into_inner()
            .user
            .map(UserName::new)
            .transpose()
            .map_err(invalid)?;
        let tokens = self
            .queue
            .tokens(&caller, user.as_ref())
            .map_err(status_of)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(pb::TokenInfo::from).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::TokenRef>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let caller = caller(&request)?;
        let token = self
            .queue
            .revoke_token(&caller, request.into_inner().id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::TokenInfo::from(&token)))
    }
}
