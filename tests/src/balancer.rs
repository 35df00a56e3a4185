//! A TCP balancer in front of several hub replicas, as a Kubernetes Service would be: each new
//! connection goes to the next upstream in turn; an upstream that refuses (a killed replica, as a
//! readiness probe would take it out) is skipped. Bytes pass untouched (the TLS is end to end).
//! A connection whose upstream dies is closed on the client's side too. Stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    upstreams: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(upstreams: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstreams = Arc::new(Mutex::new(upstreams));
        let next = Arc::new(AtomicUsize::new(0));
        let list = upstreams.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let list = list.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let candidates = list.lock().unwrap().clone();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..candidates.len() {
                        let target = candidates[(start + i) % candidates.len()];
                        if let Ok(mut up) = TcpStream::connect(target).await {
                            let _ = up.set_nodelay(true);
                            let _ = down.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            upstreams,
            task,
        })
    }

    /// Replaces the upstreams (new connections only).
    pub fn set(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.lock().unwrap() = upstreams;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
