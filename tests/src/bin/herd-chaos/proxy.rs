//! A TCP proxy on loopback between a worker and the server, which the schedule can cut (every
//! connection through it dropped, new ones refused) and heal: a network partition without
//! leaving loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one address.
pub struct Proxy {
    /// Where clients connect.
    pub address: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped at every cut: connections opened before it end.
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral loopback port.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let proxy = Proxy {
            address,
            cut: cut.clone(),
            generation: generation.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut ended = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
                        _ = ended.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Drops every connection through the proxy and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
