//! `herd login`, `logout`, `whoami`, `user` and `token`: who the CLI is, and the admins'
//! management of users and tokens. A new token's secret goes alone to stdout (so that
//! `TOKEN=$(herd token create ...)` works) and is never printed again; everything else goes to
//! stderr.

use std::io::{BufRead, IsTerminal};

use herd_proto::Timestamp;
use herd_proto::access::{NewToken, Secret, TokenKind, TokenRequest, UserName};

use crate::cli::{JsonArgs, LoginArgs, TokenCommand, UserCommand};
use crate::client::{self, Connection};
use crate::credentials;
use crate::exit::{self, Outcome};
use crate::output::{self, Table};

/// `herd login`: checks the token with the server, then saves it for that server.
pub async fn login(server: &str, args: LoginArgs) -> anyhow::Result<Outcome> {
    let url = client::server_url(server)?;
    let token = match &args.token_file {
        Some(file) => credentials::read_token_file(file)?,
        None => match credentials::from_environment()? {
            Some(token) => token,
            None => read_token_from_stdin()?,
        },
    };
    let mut connection = client::connect_with(&url, Some(&token)).await?;
    let identity = connection.who_am_i().await?;
    let path = credentials::save(&url, &token)?;
    note!(
        "logged in to {url} as {}{}; the token is saved in {}",
        identity.user,
        if identity.admin { " (admin)" } else { "" },
        path.display()
    );
    Ok(Outcome::Success)
}

fn read_token_from_stdin() -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        note!("paste your herd token, then press Enter:");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|error| exit::Error::usage(format!("cannot read the token: {error}")))?;
    if line.trim().is_empty() {
        return Err(exit::Error::usage(
            "no token given: pass --token-file FILE, set HERD_TOKEN, or write it on standard input",
        )
        .into());
    }
    Secret::new(&line).map_err(|error| exit::Error::usage(error.to_string()).into())
}

/// `herd logout`
pub fn logout(server: &str) -> anyhow::Result<Outcome> {
    let url = client::server_url(server)?;
    if credentials::forget(&url)? {
        note!("forgot the token for {url}");
    } else {
        note!("no token was saved for {url}");
    }
    Ok(Outcome::Success)
}

/// `herd whoami`
pub async fn whoami(server: &str, args: JsonArgs) -> anyhow::Result<Outcome> {
    let mut connection = client::connect(server).await?;
    let identity = connection.who_am_i().await?;
    if args.json {
        output::print_json(&identity)?;
    } else {
        let batch = identity
            .batch
            .as_ref()
            .map(|batch| format!(", batch {batch} only"))
            .unwrap_or_default();
        output::print(&format!(
            "{}{} ({} token {}{batch}) on {}\n",
            identity.user,
            if identity.admin { " (admin)" } else { "" },
            identity.kind,
            identity.token_id,
            connection.server()
        ))?;
    }
    Ok(Outcome::Success)
}

fn user_name(text: &str) -> anyhow::Result<UserName> {
    UserName::new(text).map_err(|error| exit::Error::usage(error.to_string()).into())
}

/// `herd user add|list`
pub async fn user(server: &str, command: UserCommand) -> anyhow::Result<Outcome> {
    let mut connection = client::connect(server).await?;
    match command {
        UserCommand::Add { name, admin } => {
            let name = user_name(&name)?;
            let token = connection.add_user(&name, admin).await?;
            show_new_token(&connection, &token)?;
        }
        UserCommand::List(args) => {
            let users = connection.users().await?;
            if args.json {
                output::print_json(&users)?;
            } else {
                let mut table = Table::new(vec!["NAME", "ADMIN", "TOKENS", "CREATED"]);
                for user in &users {
                    table.push(vec![
                        user.name.to_string(),
                        yes_no(user.admin),
                        user.active_tokens.to_string(),
                        user.created_at.to_string(),
                    ]);
                }
                table.print()?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// `herd token create|list|revoke`
pub async fn token(server: &str, command: TokenCommand) -> anyhow::Result<Outcome> {
    let mut connection = client::connect(server).await?;
    match command {
        TokenCommand::Create {
            user,
            worker,
            batch,
            label,
        } => {
            let request = TokenRequest {
                user: user.as_deref().map(user_name).transpose()?,
                kind: if worker {
                    TokenKind::Worker
                } else {
                    TokenKind::User
                },
                batch,
                label,
            };
            request
                .check()
                .map_err(|error| exit::Error::usage(error.to_string()))?;
            let token = connection.create_token(&request).await?;
            show_new_token(&connection, &token)?;
        }
        TokenCommand::List { user, json } => {
            let user = user.as_deref().map(user_name).transpose()?;
            let tokens = connection.tokens(user.as_ref()).await?;
            if json {
                output::print_json(&tokens)?;
            } else {
                list_tokens(&tokens)?;
            }
        }
        TokenCommand::Revoke { id } => {
            let token = connection.revoke_token(id).await?;
            note!(
                "token {} of {} revoked; calls with it are refused from now on",
                token.id,
                token.user
            );
        }
    }
    Ok(Outcome::Success)
}

fn list_tokens(tokens: &[herd_proto::access::TokenInfo]) -> anyhow::Result<()> {
    let mut table = Table::new(vec![
        "ID",
        "USER",
        "KIND",
        "BATCH",
        "LABEL",
        "CREATED",
        "LAST USED",
        "STATUS",
    ]);
    let now = Timestamp::now();
    for token in tokens {
        table.push(vec![
            token.id.to_string(),
            token.user.to_string(),
            token.kind.to_string(),
            token
                .batch
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            output::truncate(&token.label, 40),
            token.created_at.to_string(),
            token.last_used_at.map_or_else(
                || "-".to_owned(),
                |used| format!("{} ago", output::duration(now.since(used))),
            ),
            if token.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
        ]);
    }
    table.print()
}

/// The secret on stdout, alone; what it is and what to do with it on stderr.
fn show_new_token(connection: &Connection, token: &NewToken) -> anyhow::Result<()> {
    output::print(&format!("{}\n", token.secret))?;
    let info = &token.info;
    let usage = match info.kind {
        TokenKind::User => format!(
            "they run `herd login --server {}` and paste it, or set HERD_TOKEN",
            connection.server()
        ),
        TokenKind::Worker => {
            "save it in a file readable only by the worker's user, then `herd worker --token-file FILE`"
                .to_owned()
        }
    };
    note!(
        "{} token {} for {}{}: shown this once, the server keeps only its hash; {usage}",
        info.kind,
        info.id,
        info.user,
        info.batch
            .as_ref()
            .map(|batch| format!(" (batch {batch} only)"))
            .unwrap_or_default(),
    );
    Ok(())
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}
