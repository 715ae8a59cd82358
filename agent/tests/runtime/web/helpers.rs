//! Loopback fixture servers that count what reaches them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::serve::ListenerExt;

/// A server on 127.0.0.1:0 that counts TCP connections and requests per path.
pub struct Fixture {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixture {
    pub async fn spawn(router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = requests.clone();
        let router = router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let counted = counted.clone();
                async move {
                    *counted
                        .lock()
                        .unwrap()
                        .entry(req.uri().path().to_owned())
                        .or_default() += 1;
                    next.run(req).await
                }
            },
        ));
        let conns = connections.clone();
        let listener = listener.tap_io(move |_| {
            conns.fetch_add(1, Ordering::SeqCst);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://localhost:PORT{path}`: the same server under a name that resolves to loopback.
    pub fn localhost_url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.addr.port())
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.requests.lock().unwrap().values().sum()
    }
}
