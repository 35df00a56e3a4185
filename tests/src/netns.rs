//! Network namespaces for the test world's pods that need a real address (an istiod pod IP that
//! goes into an EndpointSlice, which may not hold a loopback address).
//!
//! ```text
//!  host (root namespace)                         namespace tether-<pid>-<n>
//!  198.18.a.b+1/30 on veth t<id>h ◄────veth────► 198.18.a.b+2/30 on t<id>n   (the pod IP)
//!  127.0.0.1:<API server port> ◄── bridge ──────  127.0.0.1:<same port> (a listener the harness
//!                                                 holds inside the namespace)
//! ```
//! Traffic goes only to loopback and into namespaces the harness created: a process in the namespace
//! reaches the host's API servers (and hub) through bridges on its own loopback; the host reaches it
//! at its address through the veth pair. Addresses come from 198.18.0.0/15 (set aside for testing).
//! Dropping a [`Netns`] deletes it (the veth pair goes with it); namespaces left by a test binary that
//! died are removed by the next one ([`remove_stale`]).

use crate::procs::{Proc, spawn};
use anyhow::{Context, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "tether-";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespaces of test processes that are gone (`tether-<pid>-<n>`).
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// One network namespace with one address, joined to the host by a veth pair.
pub struct Netns {
    pub name: String,
    /// The address inside the namespace.
    pub ip: Ipv4Addr,
    /// The host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    bridges: Vec<tokio::task::JoinHandle<()>>,
}

impl Netns {
    /// Creates a namespace with an address of its own. Needs root (CAP_NET_ADMIN).
    pub fn create() -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(remove_stale);
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{n}");
        // A /30 of 198.18.0.0/15 per namespace: 32,768 of them.
        let block = (pid.wrapping_mul(97).wrapping_add(n)) % 32_768;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let (host_ip, ns_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let id = format!("{:x}", pid % 0x10000 * 0x1000 + n % 0x1000);
        let (host_if, ns_if) = (format!("t{id}h"), format!("t{id}n"));
        ip(&["netns", "add", &name])?;
        let made = Self {
            name: name.clone(),
            ip: ns_ip,
            host_ip,
            bridges: Vec::new(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(made)
    }

    fn open(&self) -> anyhow::Result<OwnedFd> {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening network namespace {}", self.name))?;
        Ok(f.into())
    }

    /// Binds a listener on `addr` inside the namespace (on a thread that enters it and leaves; the
    /// socket stays in the namespace).
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
        let fd = self.open()?;
        std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            // SAFETY: setns on this thread only; the thread ends right after.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .expect("listen thread")
    }

    /// Connects to `127.0.0.1:port` inside the namespace (istiod serves its debug pages unauthenticated
    /// only to its own loopback). The socket is made on a thread that enters the namespace.
    pub async fn connect_loopback(&self, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
        let fd = self.open()?;
        let stream = tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::TcpStream> {
            // SAFETY: setns on this blocking-pool thread, undone before the thread is reused.
            let home = std::fs::File::open("/proc/self/ns/net")?;
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let conn = std::net::TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                std::time::Duration::from_secs(5),
            );
            if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                // A pool thread left in the wrong namespace would poison later work: give up loudly.
                panic!("setns back: {}", std::io::Error::last_os_error());
            }
            let conn = conn?;
            conn.set_nonblocking(true)?;
            Ok(conn)
        })
        .await??;
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }

    /// Makes `127.0.0.1:port` inside the namespace reach `127.0.0.1:port` of the host (an API
    /// server, the hub). Call from within a tokio runtime; the bridge lives as long as `self`.
    pub fn bridge_loopback(&mut self, port: u16) -> anyhow::Result<()> {
        let listener = self.listen(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        self.bridges.push(tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut host) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Spawns `cmd` inside the namespace (it dies with the test binary, see [`crate::procs`]).
    pub fn spawn(&self, mut cmd: Command) -> anyhow::Result<Proc> {
        let fd = self.open()?;
        let raw = fd.as_raw_fd();
        // SAFETY: setns is a plain syscall, allowed between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = spawn(cmd)?;
        drop(fd);
        Ok(proc)
    }
}

/// A veth pair between two namespaces, `a_ip/prefix` in `a` and `b_ip/prefix` in `b` (two nodes of
/// different clusters on one link). It goes when either namespace is deleted.
pub fn veth_between(
    a: &Netns,
    a_ip: Ipv4Addr,
    b: &Netns,
    b_ip: Ipv4Addr,
    prefix: u8,
) -> anyhow::Result<()> {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "{:x}",
        std::process::id() % 0x10000 * 0x100 + N.fetch_add(1, Ordering::Relaxed) % 0x100
    );
    let (a_if, b_if) = (format!("w{id}a"), format!("w{id}b"));
    ip(&[
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
        &b.name,
    ])?;
    for (ns, ifname, addr) in [(&a.name, &a_if, a_ip), (&b.name, &b_if, b_ip)] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            ifname,
        ])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        for b in &self.bridges {
            b.abort();
        }
        // The veth pair goes with the namespace.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
