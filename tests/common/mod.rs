//! Test harness: stores in temp dirs, the real `syncfs` binary mounting them, and guards
//! that unmount (and kill) whatever a test mounted, even when the test fails.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The syncfs binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_syncfs")
}

/// True if `path` is a mount point of a FUSE filesystem right now.
pub fn is_fuse_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, mp, ty) = (f.next(), f.next(), f.next());
        mp == Some(&*p) && ty.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Detaches whatever is mounted at `path` (ignores errors).
pub fn force_unmount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}

/// Runs `syncfs` with arguments, panicking with its stderr on failure.
pub fn syncfs(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().expect("run syncfs");
    assert!(
        out.status.success(),
        "syncfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One store and its mount point in a temp dir.
pub struct Node {
    /// Keeps the temp dir alive.
    pub tmp: tempfile::TempDir,
    /// The store directory.
    pub store: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    child: Option<Child>,
    /// A filesystem of its own the store sits on (unmounted on drop, after the daemon).
    pub small_fs: Option<PathBuf>,
}

impl Node {
    /// A new store (not mounted).
    pub fn new() -> Node {
        Node::with_init(&[])
    }

    /// A new store, `init` given extra arguments.
    pub fn with_init(extra: &[&str]) -> Node {
        Node::init_under("", extra)
    }

    /// A new store whose directory sits below `sub` (a relative path, made here) in
    /// the temp dir, e.g. to give the store a long absolute path; the mount point
    /// stays short.
    pub fn with_store_under(sub: &str) -> Node {
        Node::init_under(sub, &[])
    }

    /// A new store on a tmpfs of its own of `mib` MiB (to fill it up).
    pub fn on_tmpfs(mib: u64, extra: &[&str]) -> Node {
        Node::init_in(
            tempfile::tempdir().expect("tempdir"),
            "small",
            extra,
            Some(mib),
        )
    }

    fn init_under(sub: &str, extra: &[&str]) -> Node {
        Node::init_in(tempfile::tempdir().expect("tempdir"), sub, extra, None)
    }

    fn init_in(tmp: tempfile::TempDir, sub: &str, extra: &[&str], tmpfs: Option<u64>) -> Node {
        let parent = tmp.path().join(sub);
        std::fs::create_dir_all(&parent).unwrap();
        let small_fs = tmpfs.map(|mib| {
            let size = format!("size={mib}m");
            let st = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &size,
                    "tmpfs",
                    parent.to_str().unwrap(),
                ])
                .status();
            assert!(st.is_ok_and(|s| s.success()), "mounting a tmpfs");
            parent.clone()
        });
        let store = parent.join("store");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["init", store.to_str().unwrap()];
        args.extend_from_slice(extra);
        syncfs(&args);
        Node {
            tmp,
            store,
            mnt,
            child: None,
            small_fs,
        }
    }

    /// The backing data directory.
    pub fn data(&self) -> PathBuf {
        self.store.join("data")
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Starts `syncfs mount` and waits until the mount is up.
    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    /// Starts `syncfs mount` with extra environment variables (e.g. `SYNCFS_FAULT`).
    pub fn mount_with(&mut self, env: &[(&str, &str)]) {
        self.mount_wrapped(&[], &[], env);
    }

    /// Starts `syncfs mount` with extra arguments, run through `wrap` (a command and
    /// its arguments, e.g. `nsenter --net=...`) if given, and waits until it is up.
    pub fn mount_wrapped(&mut self, wrap: &[&str], extra: &[&str], env: &[(&str, &str)]) {
        self.spawn(wrap, extra, env);
        self.wait_mounted();
    }

    /// Starts `syncfs mount` (see [`Node::mount_wrapped`]) without waiting for it.
    pub fn spawn(&mut self, wrap: &[&str], extra: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("mount.log"))
            .unwrap();
        let mut cmd = match wrap.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .args([
                "mount",
                self.store.to_str().unwrap(),
                self.mnt.to_str().unwrap(),
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied()) // (a test's own RUST_LOG wins)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn syncfs mount");
        self.child = Some(child);
    }

    /// Waits until the daemon started by [`Node::spawn`] has its mount up.
    pub fn wait_mounted(&mut self) {
        // (the first scan of a big adopted folder runs before the mount comes up)
        let deadline = Instant::now() + Duration::from_secs(180);
        // a stale mount left by a killed daemon answers ENOTCONN until the new one replaces it
        while syncfs::fs::mount::probe(&self.mnt) != syncfs::fs::mount::MountState::Live {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("syncfs mount exited early ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mount daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("mount.log")).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mounted").id()
    }

    /// Stops the daemon with SIGTERM and waits for a clean unmount.
    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "syncfs mount exited with {st}: {}",
                    self.log()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                force_unmount(&self.mnt);
                panic!("syncfs mount did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_fuse_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// True if the daemon process has exited (e.g. an injected fault aborted it).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Kills the daemon with SIGKILL (the mount stays behind, stale).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_fuse_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        if let Some(fs) = &self.small_fs {
            let _ = Command::new("umount").arg("-l").arg(fs).status();
        }
    }
}

/// `log` without its terminal colour codes (ESC `[` ... `m`).
pub fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Opens the store's journal in-process (the store must not be mounted).
pub fn journal_snapshot(store: &Path) -> syncfs::journal::Snapshot {
    let j = syncfs::journal::Journal::open(&store.join("journal")).expect("open journal");
    let s = j.snapshot();
    j.close().expect("close journal");
    s
}

/// A free TCP port on 127.0.0.1 (bound, then released), never the same twice in one
/// test process. Taken below the kernel's ephemeral range (32768 up by default,
/// `net.ipv4.ip_local_port_range`), from which both port 0 and every outgoing
/// connection draw: there, a port released here could be handed again to a parallel
/// test, or taken by a daemon's dial, before the daemon it is meant for binds it. Test
/// binaries run one after another (`cargo test`); two run at once could still pick
/// the same port, their starting points being apart only by their pids.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN; // apart per test binary
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in {LOW}..{}", LOW + SPAN);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `key: value` from `syncfs id` output.
fn id_field(store: &Path, key: &str) -> String {
    let out = syncfs(&["id", store.to_str().unwrap()]);
    out.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// The store's PeerId.
pub fn peer_id(store: &Path) -> String {
    id_field(store, "peer id:")
}

/// The store's folder id.
pub fn folder_id(store: &Path) -> String {
    id_field(store, "folder id:")
}

/// Replaces `key = ...` in the store's config.toml.
pub fn set_config(store: &Path, key: &str, value: &str) {
    let p = store.join("config.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&p, out.join("\n") + "\n").unwrap();
}

/// Polls `f` every 20 ms until it is true or `secs` pass; returns whether it became true.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A thread reading one file over and over until stopped, counting the reads that
/// failed (a file replaced by a peer's version must never be found missing).
pub struct Reader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    /// Starts reading `path`.
    pub fn start(path: PathBuf) -> Reader {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut reads, mut failed) = (0, Vec::new());
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(_) => reads += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (reads, failed)
        });
        Reader { stop, thread }
    }

    /// Stops; the reads that succeeded and the errors of those that failed.
    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A TCP proxy on loopback that counts the bytes it forwards (both ways).
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    /// Bytes forwarded so far.
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// While set, the link is down: connections are closed and new ones refused.
    pub down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Forwards connections on a new port to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, d) = (bytes.clone(), down.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(a) = conn else { continue };
                if d.load(Ordering::Relaxed) {
                    continue; // dropped: the link is down
                }
                let Ok(z) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [(a.try_clone().unwrap(), z.try_clone().unwrap()), (z, a)]
                {
                    let (b, d) = (b.clone(), d.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 65536];
                        let _ = from.set_read_timeout(Some(std::time::Duration::from_millis(100)));
                        while !d.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    b.fetch_add(n as u64, Ordering::Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, bytes, down }
    }

    /// Takes the link down (open connections close, new ones are refused).
    #[allow(dead_code)]
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Brings the link back.
    #[allow(dead_code)]
    pub fn heal(&self) {
        self.down.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes forwarded so far.
    pub fn count(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Two stores that sync with each other over loopback, optionally through counting proxies.
pub struct Pair {
    /// The first node.
    pub a: Node,
    /// The second node (joined A's folder).
    pub b: Node,
    /// Proxies A→B and B→A, when asked for.
    pub proxies: Vec<Proxy>,
}

impl Pair {
    /// Two configured, unmounted stores; `proxied` routes both directions through proxies.
    pub fn new(proxied: bool) -> Pair {
        let a = Node::new();
        let b = Node::with_init(&["--join", &folder_id(&a.store)]);
        Pair::of(a, b, proxied)
    }

    /// Two stores adopting the existing folders `a` and `b` (`init --data`).
    #[allow(dead_code)]
    pub fn adopting(a: &Path, b: &Path, proxied: bool) -> Pair {
        let na = Node::with_init(&["--data", a.to_str().unwrap()]);
        let id = folder_id(&na.store);
        let nb = Node::with_init(&["--join", &id, "--data", b.to_str().unwrap()]);
        Pair::of(na, nb, proxied)
    }

    /// Configures `a` and `b` as each other's peer.
    pub fn of(a: Node, b: Node, proxied: bool) -> Pair {
        let (pa, pb) = (free_port(), free_port());
        let mut proxies = Vec::new();
        let (to_b, to_a) = if proxied {
            proxies.push(Proxy::start(pb));
            proxies.push(Proxy::start(pa));
            (proxies[0].port, proxies[1].port)
        } else {
            (pb, pa)
        };
        for (n, listen, peer_port, peer) in [(&a, pa, to_b, &b), (&b, pb, to_a, &a)] {
            set_config(
                &n.store,
                "listen",
                &format!("[\"/ip4/127.0.0.1/tcp/{listen}\"]"),
            );
            set_config(&n.store, "mdns", "false");
            set_config(&n.store, "settle_ms", "100");
            let addr = format!(
                "/ip4/127.0.0.1/tcp/{peer_port}/p2p/{}",
                peer_id(&peer.store)
            );
            syncfs(&["add-peer", n.store.to_str().unwrap(), &addr]);
        }
        Pair { a, b, proxies }
    }

    /// Both mounted.
    pub fn mounted(proxied: bool) -> Pair {
        let mut p = Pair::new(proxied);
        p.a.mount();
        p.b.mount();
        p
    }
}

/// `len` pseudo-random (incompressible) bytes from `seed` (xorshift64).
#[allow(dead_code)]
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// BLAKE3 of a file's content, or None if unreadable.
pub fn hash_of(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|d| *blake3::hash(&d).as_bytes())
}

/// The last `n` lines of `text` (for failure messages).
#[allow(dead_code)]
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
