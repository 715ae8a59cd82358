//! A loopback TCP proxy that tests put between a service and Redis or RabbitMQ, to cut or stall the
//! connection without disturbing the other tests that share the server.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy to `target` that can be cut (closing every connection) and restored on the
/// same port, or stalled (connections stay open, but no byte goes through until it is resumed).
#[derive(Debug)]
pub struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    running: CancellationToken,
    stalled: watch::Sender<bool>,
}

impl Proxy {
    /// A proxy on a free loopback port to `target` (`host:port`).
    ///
    /// # Panics
    /// When no port can be bound or `target` is not an address.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let proxy = Self {
            address,
            target: target.parse().unwrap(),
            running: CancellationToken::new(),
            stalled: watch::channel(false).0,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, running, stalled) = (self.target, self.running.clone(), self.stalled.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    () = running.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                };
                let (running, stalled) = (running.clone(), stalled.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::select! {
                        () = running.cancelled() => {}
                        () = pipe(from_client, to_server, stalled.subscribe()) => {}
                        () = pipe(from_server, to_client, stalled.subscribe()) => {}
                    }
                });
            }
        });
    }

    /// Closes every connection and stops listening.
    pub fn cut(&mut self) {
        self.running.cancel();
    }

    /// Listens again on the same port.
    ///
    /// # Panics
    /// When the port was taken meanwhile.
    pub async fn restore(&mut self) {
        self.running = CancellationToken::new();
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }

    /// Holds every byte until [`Proxy::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets bytes through again after [`Proxy::stall`].
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// The proxy's address (`127.0.0.1:port`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Copies bytes from `from` to `to`, holding them while `stalled` says so.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
