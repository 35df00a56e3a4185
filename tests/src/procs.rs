//! Child processes that cannot outlive the test binary.
//!
//! Every process is spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`. The kernel
//! delivers that signal when the *spawning thread* exits, so spawning from a test's own thread would kill
//! shared control planes when that test ends; the dedicated thread lives as long as the process. A panicking
//! test, an aborted binary or a `kill -9` of the test runner all take the control planes with them.
//! [`Proc`] also kills its process on drop, for processes that belong to one test.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends while the process runs.
            })
            .expect("spawn harness-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it is SIGKILLed when the test process exits for any reason.
pub fn spawn(mut cmd: Command) -> std::io::Result<Proc> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread alive");
    let child = rx.recv().expect("spawner replied")?;
    Ok(Proc { child: Some(child) })
}

/// True while `pid` runs (a zombie has exited: only a live process has a non-Z state).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.split(')')
                .nth(1)
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`; reaps it. Idempotent.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
