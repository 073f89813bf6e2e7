//! A fresh, empty PostgreSQL database per test.
//!
//! [`TestDatabase::create`] reads the admin URL from `HERD_TEST_POSTGRES_URL`, creates a
//! database named `herd_test_<unique>` and hands back its URL; dropping the [`TestDatabase`]
//! drops the database (best effort). Start a server with `scripts/start-postgres.sh`, which
//! prints the variable to export. An unset variable is an error, never a silent skip: a suite
//! that quietly tests nothing is worse than one that fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The environment variable that holds the admin URL.
pub const ADMIN_URL_VARIABLE: &str = "HERD_TEST_POSTGRES_URL";

/// A database created for one test, dropped when this guard is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database `herd_test_<unique>` on the server named by
    /// `HERD_TEST_POSTGRES_URL` (a URL of a role with CREATEDB, e.g.
    /// `postgres://herd:herd@127.0.0.1:5432/postgres`).
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin_url = std::env::var(ADMIN_URL_VARIABLE).map_err(|_| {
            anyhow::anyhow!(
                "{ADMIN_URL_VARIABLE} is not set: the PostgreSQL tests need a server. Run \
                 `eval \"$(sudo scripts/start-postgres.sh)\"` (or run it as root and export the \
                 line it prints), then run the tests again"
            )
        })?;
        let name = unique_database_name();
        let url = with_database(&admin_url, &name)?;

        let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
            format!(
                "cannot connect to the PostgreSQL admin URL in {ADMIN_URL_VARIABLE}; is the \
                 server running (scripts/start-postgres.sh)?"
            )
        })?;
        // The name is ours (letters, digits, underscores), so formatting it in is safe.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create test database {name}"))?;
        admin.close().await.ok();
        Ok(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// The URL of the new database (same server, role and password as the admin URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which must not be blocked on; a thread with
        // its own small runtime does the work, and joining it means the database is gone
        // before the test process exits.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&admin_url, &name))
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!(
                    "warning: could not drop test database {}: {error:#}",
                    self.name
                )
            }
            Err(_) => eprintln!(
                "warning: the thread dropping test database {} panicked",
                self.name
            ),
        }
    }
}

/// Drops `name`, first ending the connections a store pool may still hold on it.
///
/// Not `WITH (FORCE)`: that also tries to end autovacuum workers, which a non-superuser role
/// may not do, so it fails right after a big write. A plain `DROP DATABASE` waits for
/// autovacuum itself; it is retried for a few seconds while our own connections close.
async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let result = loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut admin)
        .await?;
        match sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\"")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break Ok(()),
            // 55006 object_in_use: a connection is still closing.
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some("55006")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => break Err(error.into()),
        }
    };
    admin.close().await.ok();
    result
}

/// `herd_test_<pid>_<time>_<sequence>`: unique across concurrent test processes and tests.
fn unique_database_name() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("herd_test_{}_{nanos}_{sequence}", std::process::id())
}

/// The admin URL with its database (the path) replaced by `database`, query kept.
fn with_database(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        bail!(
            "{ADMIN_URL_VARIABLE} must look like postgres://USER:PASSWORD@HOST:PORT/DATABASE, \
             got `{}`",
            base.split('@').next_back().unwrap_or_default()
        );
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    let mut url = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_replaces_the_path_and_keeps_the_query() -> anyhow::Result<()> {
        assert_eq!(
            with_database("postgres://herd:herd@127.0.0.1:5432/postgres", "x")?,
            "postgres://herd:herd@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h@localhost?sslmode=disable", "x")?,
            "postgresql://h@localhost/x?sslmode=disable"
        );
        assert!(with_database("127.0.0.1:5432", "x").is_err());
        Ok(())
    }
}
