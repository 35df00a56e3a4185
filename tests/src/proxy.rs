//! A TCP proxy between an agent and the hub, for partition tests: pass traffic, cut it (close every
//! connection and refuse new ones), drop it silently (a half-open network: connections stay up, bytes
//! vanish), delay it, or throttle it to a bandwidth. Runs on the test's runtime; stops when dropped.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Close every connection; accept and close new ones at once.
    Cut,
    /// Keep connections open but drop every byte, both ways.
    Blackhole,
    /// Forward each chunk after this delay (each way).
    Delay(Duration),
    /// At most this many bytes per second, each way.
    Throttle(u64),
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Cut {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx.clone()));
            }
        });
        Ok(Self { addr, mode, task })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Throttled: read in slices of a tenth of a second's worth, so pacing stays smooth.
        let limit = match *mode.borrow() {
            Mode::Throttle(rate) => (rate as usize / 10).clamp(1, buf.len()),
            _ => buf.len(),
        };
        let n = tokio::select! {
            r = from.read(&mut buf[..limit]) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Cut {
                    return;
                }
                continue;
            }
        };
        let current = *mode.borrow();
        match current {
            Mode::Pass => {}
            Mode::Cut => return,
            Mode::Blackhole => continue,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Throttle(rate) => {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64)).await
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
