//! PostgreSQL with a standby (e.g. pg_auto_failover): a database URL may name several hosts,
//! `postgres://user@h1:5432,h2:5432/hearth?target_session_attrs=read-write`, as libpq's do.
//! sqlx connects to one host, so the store finds the one that accepts writes, connects its
//! pools there, and a watcher re-points them when a promotion moves the primary. Every new
//! connection checks it landed on a server that accepts writes (a standby, or a primary that
//! was just promoted and does not accept writes yet, is refused as "unavailable": the request
//! answers 503 with Retry-After, never a wrong answer). Connections to the old primary die with
//! it and the pools replace them.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{Connection, Row};

/// How often the watcher checks that the pools point at the server that accepts writes.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long one host may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The single-host URLs of a multi-host PostgreSQL URL, in the order given; `None` for a URL
/// with one host (used as it is). `target_session_attrs` (only `read-write`, or `any` for one
/// host) is Hearth's to honour, and is taken out.
pub fn split_hosts(url: &str) -> Result<Option<Vec<String>>, String> {
    let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
        return Ok(None);
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut attrs = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                attrs = Some(value.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    match attrs.as_deref() {
        None | Some("read-write") => {}
        Some("any") if !hosts.contains(',') => {}
        Some(other) => {
            return Err(format!(
                "target_session_attrs={other} is not supported: Hearth writes, so it connects to the host that accepts writes (read-write)"
            ));
        }
    }
    if !hosts.contains(',') {
        return Ok(None);
    }
    let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    let user = userinfo.map_or(String::new(), |u| format!("{u}@"));
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() {
                Err("a host in the database URL's host list is empty".to_owned())
            } else {
                Ok(format!("postgres://{user}{host}{path}{query}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Whether the server behind `conn` accepts writes now.
pub async fn accepts_writes(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
        .fetch_one(&mut *conn)
        .await?;
    Ok(!row.try_get::<bool, _>(0)? && row.try_get::<String, _>(1)? == "off")
}

/// Whether the server at `url` accepts writes (false when it cannot be reached).
async fn probe(url: &str) -> bool {
    let attempt = async {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let writable = accepts_writes(&mut conn).await;
        let _ = conn.close().await;
        writable
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, attempt).await, Ok(Ok(true)))
}

/// The hosts of one deployment and which of them the pools point at.
pub struct Hosts {
    pub urls: Vec<String>,
    current: AtomicUsize,
}

impl Hosts {
    /// Finds the host that accepts writes (the first one if none answers yet).
    pub async fn discover(urls: Vec<String>) -> Hosts {
        let hosts = Hosts { urls, current: AtomicUsize::new(0) };
        if let Some(found) = hosts.find_primary().await {
            hosts.current.store(found, Ordering::Relaxed);
        }
        hosts
    }

    pub fn current_url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed)]
    }

    async fn find_primary(&self) -> Option<usize> {
        for (index, url) in self.urls.iter().enumerate() {
            if probe(url).await {
                return Some(index);
            }
        }
        None
    }

    /// Watches the primary every [`WATCH_EVERY`] until the pools close, re-pointing them (and
    /// the listening pool) at the host that accepts writes when it moves.
    pub fn watch(self: std::sync::Arc<Self>, pool: sqlx::AnyPool, listen: sqlx::PgPool) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if pool.is_closed() {
                    return;
                }
                if probe(self.current_url()).await {
                    continue;
                }
                let Some(found) = self.find_primary().await else { continue };
                let previous = self.current.swap(found, Ordering::Relaxed);
                if previous == found {
                    continue;
                }
                let url = &self.urls[found];
                match (sqlx::any::AnyConnectOptions::from_str(url), sqlx::postgres::PgConnectOptions::from_str(url)) {
                    (Ok(any), Ok(pg)) => {
                        pool.set_connect_options(any);
                        listen.set_connect_options(pg);
                        tracing::warn!(
                            from = host_of(&self.urls[previous]),
                            to = host_of(url),
                            "the PostgreSQL primary moved: new connections go to the new one"
                        );
                    }
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::error!(%error, "cannot use the new primary's URL");
                    }
                }
            }
        });
    }
}

/// `host:port` of a single-host URL, for logs (no user, no password).
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// The error a connection to a server that does not accept writes fails with: "unavailable"
/// (503), like a server that went away, since a promotion is under way or the pool is pointed at
/// a standby until the watcher moves it.
pub fn read_only_server() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "the PostgreSQL server does not accept writes (standby, or a promotion under way)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_and_the_rest_kept() {
        assert_eq!(split_hosts("postgres://u@h1:5432/db").unwrap(), None);
        assert_eq!(split_hosts("sqlite://x.db").unwrap(), None);
        assert_eq!(
            split_hosts("postgres://u:p@h1:5432,h2:6000/hearth?target_session_attrs=read-write&sslmode=disable")
                .unwrap(),
            Some(vec![
                "postgres://u:p@h1:5432/hearth?sslmode=disable".to_owned(),
                "postgres://u:p@h2:6000/hearth?sslmode=disable".to_owned()
            ])
        );
        assert_eq!(
            split_hosts("postgresql://h1,h2/db").unwrap(),
            Some(vec!["postgres://h1/db".to_owned(), "postgres://h2/db".to_owned()])
        );
        assert!(split_hosts("postgres://h1,h2/db?target_session_attrs=read-only").is_err());
        assert!(split_hosts("postgres://h1,,h2/db").is_err());
        assert_eq!(host_of("postgres://u:secret@h2:6000/hearth?x=1"), "h2:6000");
    }
}
