//! Benchmark (not a timed test; run by `scripts/bench-pairing.sh`): the first pairing of
//! two mostly-same adopted folders, beside rsync -z over the same pair, the index cost per
//! unchanged file at first contact and at reconnect, and the mount-time scan of unchanged
//! files beside `find -ls` over the same tree. Bytes are counted by proxies outside the
//! programs (TCP payload; TCP/IP headers not included, for both tools alike).

mod common;
use common::{wait_until, Pair, Proxy};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A source-like tree: `n` text files in directories of 25.
fn make_tree(root: &Path, n: usize) {
    for i in 0..n {
        let d = root.join(format!("src{:04}", i / 25));
        fs::create_dir_all(&d).unwrap();
        let body = format!(
            "// module {i}\n{}",
            "pub fn item() -> usize { 42 }\n".repeat(20 + i % 60)
        );
        fs::write(d.join(format!("m{i}.rs")), body).unwrap();
    }
}

/// The same changes on one side: 1% of the files rewritten with a line changed, a few new.
fn change(root: &Path, n: usize) {
    for i in (0..n).step_by(100) {
        let p = root.join(format!("src{:04}/m{i}.rs", i / 25));
        let mut body = fs::read_to_string(&p).unwrap();
        body.insert_str(0, "// changed on one side\n");
        fs::write(&p, body).unwrap();
    }
    for i in 0..10 {
        fs::write(
            root.join(format!("new{i}.txt")),
            format!("new file {i}\n").repeat(50),
        )
        .unwrap();
    }
}

fn same(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .args(["-rq"])
        .arg(a)
        .arg(b)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// rsync -z from `src` to a copy of `dst`, through a counting proxy; returns the bytes.
fn rsync_bytes(src: &Path, dst: &Path) -> u64 {
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("rsyncd.conf");
    fs::write(
        &conf,
        format!(
            "use chroot = no\n[m]\npath = {}\nread only = false\nuid = root\ngid = root\n",
            dst.display()
        ),
    )
    .unwrap();
    let port = common::free_port();
    let mut d = Command::new("rsync")
        .args([
            "--daemon",
            "--no-detach",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(&conf)
        .spawn()
        .expect("rsync daemon");
    std::thread::sleep(Duration::from_millis(500));
    let proxy = Proxy::start(port);
    let ok = Command::new("rsync")
        .args(["-az", "--delete"])
        .arg(format!("{}/", src.display()))
        .arg(format!("rsync://127.0.0.1:{}/m/", proxy.port))
        .status()
        .unwrap()
        .success();
    let _ = d.kill();
    let _ = d.wait();
    assert!(ok, "rsync failed");
    proxy.count()
}

fn copy_tree(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// The scan time logged by the daemon's last "scan done" line, in ms.
fn scan_ms(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("scan done"))
        .unwrap_or("");
    let mut plain = String::new();
    let mut esc = false;
    for c in line.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: scripts/bench-pairing.sh"]
fn pairing() {
    let n = env("BENCH_FILES", 2_500);
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    make_tree(&x, n);
    copy_tree(&x, &y);
    change(&x, n);
    let (rx, ry) = (t.path().join("rx"), t.path().join("ry"));
    copy_tree(&x, &rx);
    copy_tree(&y, &ry);
    let rsync = rsync_bytes(&rx, &ry);
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    let start = Instant::now();
    assert!(
        wait_until(600, || same(&p.a.mnt, &p.b.mnt)),
        "pairing converges"
    );
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let syncfs = p.proxies.iter().map(|x| x.count()).sum::<u64>();
    p.a.unmount();
    p.b.unmount();
    let before = p.proxies.iter().map(|x| x.count()).sum::<u64>();
    p.a.mount();
    p.b.mount();
    std::thread::sleep(Duration::from_secs(5));
    let reconnect = p.proxies.iter().map(|x| x.count()).sum::<u64>() - before;
    let scan = scan_ms(&p.a.log());
    p.a.unmount();
    p.b.unmount();
    let t0 = Instant::now();
    let out = Command::new("find")
        .arg(&x)
        .arg("-ls")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    let find_ms = t0.elapsed().as_millis() as u64;
    println!(
        "pairing of {n} files, 1% changed on one side, 10 new (both adopted, then connected):"
    );
    println!("  syncfs until equal   {syncfs:>10} B  ({secs:.1} s)");
    println!("  rsync -z (daemon)    {rsync:>10} B");
    println!(
        "  syncfs / rsync -z    {:>10.2}",
        syncfs as f64 / rsync.max(1) as f64
    );
    println!(
        "  reconnect, unchanged {reconnect:>10} B  ({:.2} B per file)",
        reconnect as f64 / n as f64
    );
    println!("  mount-time scan      {scan:>10} ms (find -ls of the same tree: {find_ms} ms, ratio {:.1})", scan as f64 / find_ms.max(1) as f64);
}

#[test]
#[ignore = "benchmark: scripts/bench-pairing.sh"]
fn first_contact_and_scan_of_many_unchanged_files() {
    let n = env("BENCH_UNCHANGED", 100_000);
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    make_tree(&x, n);
    copy_tree(&x, &y);
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    fs::write(p.a.m("marker"), b"1").unwrap();
    assert!(wait_until(600, || fs::read(p.b.m("marker")).is_ok()));
    std::thread::sleep(Duration::from_secs(2));
    let first = p.proxies.iter().map(|x| x.count()).sum::<u64>();
    p.a.unmount();
    p.b.unmount();
    p.a.mount();
    p.b.mount();
    fs::write(p.a.m("marker"), b"2").unwrap();
    assert!(wait_until(120, || fs::read(p.b.m("marker"))
        .ok()
        .as_deref()
        == Some(&b"2"[..])));
    std::thread::sleep(Duration::from_secs(2));
    let second = p.proxies.iter().map(|x| x.count()).sum::<u64>() - first;
    let scan = scan_ms(&p.a.log());
    p.a.unmount();
    p.b.unmount();
    let t0 = Instant::now();
    Command::new("find")
        .arg(&x)
        .arg("-ls")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let find_ms = t0.elapsed().as_millis() as u64;
    println!("{n} unchanged files in two adopted folders:");
    println!(
        "  first contact        {first:>10} B  ({:.2} B per file, both ways)",
        first as f64 / n as f64
    );
    println!(
        "  reconnect            {second:>10} B  ({:.3} B per file)",
        second as f64 / n as f64
    );
    println!("  mount-time scan      {scan:>10} ms (find -ls: {find_ms} ms, ratio {:.1}; goal < 2000 ms)", scan as f64 / find_ms.max(1) as f64);
}

/// Text-like bytes: words of a small vocabulary, lines of about 60 characters.
fn words(len: usize, seed: u64) -> Vec<u8> {
    const VOCAB: [&str; 24] = [
        "the", "of", "sync", "file", "peer", "chunk", "and", "a", "to", "version", "in", "mount",
        "delta", "is", "link", "hash", "tree", "on", "bytes", "for", "journal", "with", "index",
        "slow",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(VOCAB[(x % 24) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// xdelta3's encoding of `new` against `old` (bytes), if xdelta3 is installed.
fn xdelta3(old: &Path, new: &Path) -> Option<u64> {
    let out = tempfile::NamedTempFile::new().ok()?;
    let ok = Command::new("xdelta3")
        .args(["-e", "-f", "-s"])
        .arg(old)
        .arg(new)
        .arg(out.path())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| fs::metadata(out.path()).map(|m| m.len()).ok())?
}

/// One file that differs between two adopted folders (A's is newer), paired: syncfs's
/// bytes on the wire beside rsync -z and xdelta3 over the same pair.
fn pair_one(what: &str, old: &[u8], new: &[u8]) {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    fs::create_dir_all(&x).unwrap();
    fs::create_dir_all(&y).unwrap();
    fs::write(x.join("f"), new).unwrap();
    fs::write(y.join("f"), old).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let f = fs::File::options().write(true).open(x.join("f")).unwrap();
    f.set_modified(later).unwrap(); // A's is newer: B takes it
    let (rx, ry) = (t.path().join("rx"), t.path().join("ry"));
    copy_tree(&x, &rx);
    copy_tree(&y, &ry);
    let rsync = rsync_bytes(&rx, &ry);
    let xd = xdelta3(&y.join("f"), &x.join("f"));
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    let start = Instant::now();
    let want = blake3::hash(new);
    let done = wait_until(600, || {
        fs::read(p.b.mnt.join("f")).is_ok_and(|b| blake3::hash(&b) == want)
    });
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let syncfs = p.proxies.iter().map(|x| x.count()).sum::<u64>();
    p.a.unmount();
    p.b.unmount();
    assert!(done, "{what}: B never held A's version");
    for l in
        p.a.log()
            .lines()
            .filter(|l| l.contains("rebuilt by the peer"))
    {
        println!("    {}", l.split("chunked: ").last().unwrap_or(l));
    }
    report(
        what,
        &format!("{syncfs:>10} B ({secs:>4.1} s)"),
        syncfs,
        rsync,
        xd,
    );
}

/// One result line: syncfs (as `shown`) beside rsync -z and xdelta3.
fn report(what: &str, shown: &str, syncfs: u64, rsync: u64, xd: Option<u64>) {
    let xd = xd.map_or("n/a".to_string(), |b| b.to_string());
    println!(
        "{what:<48} syncfs {shown}  rsync -z {rsync:>10} B  xdelta3 {xd:>9} B  syncfs/rsync {:.3}",
        syncfs as f64 / rsync.max(1) as f64
    );
}

/// Pairing mode of the big-file workloads (issue "fewest bytes"): the change is made
/// on one side, both folders adopted, then connected.
#[test]
#[ignore]
fn pairing_big_files() {
    let mib = |n: usize| n << 20;
    let text = words(mib(32), 1);
    pair_one(
        "(baseline: the same 32 MiB of text, mtime only)",
        &text,
        &text,
    );
    let mut inserted = words(100, 2);
    inserted.extend_from_slice(&text);
    pair_one(
        "100 B inserted at the top of 32 MiB of text",
        &text,
        &inserted,
    );
    let doc = words(mib(16), 3);
    let mut saved = doc.clone();
    saved[mib(8)..mib(8) + 20].copy_from_slice(b"twenty changed bytes");
    pair_one("16 MiB document, 20 B changed", &doc, &saved);
    let big = common::random_bytes(mib(256), 11);
    let mut edited = big.clone();
    edited[mib(100) + 12_345..mib(100) + 12_345 + 4096]
        .copy_from_slice(&common::random_bytes(4096, 12));
    pair_one("4 KiB random edit in a 256 MiB file", &big, &edited);
    drop((big, edited));
    let mut image = vec![0u8; mib(256)];
    for (i, c) in image
        .chunks_mut(mib(1))
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
    {
        c.copy_from_slice(&common::random_bytes(mib(1), 100 + i as u64));
    }
    let mut written = image.clone();
    for w in 0..100u64 {
        let at = ((w * 2_654_435_761) % (mib(256) as u64 - 4096)) as usize & !4095;
        written[at..at + 4096].copy_from_slice(&common::random_bytes(4096, 500 + w));
    }
    pair_one(
        "100 random 4 KiB writes in a 256 MiB image",
        &image,
        &written,
    );
    drop((image, written));
    let log = words(mib(64), 5);
    let mut grown = log.clone();
    grown.extend_from_slice(&words(mib(1), 6));
    pair_one("1 MiB of text appended to a 64 MiB log", &log, &grown);
}

/// Waits until B's mount shows `want` at `f`, then for the link to go quiet; returns
/// the bytes both proxies carried since `before`.
fn settle(p: &Pair, want: &[u8], before: u64, what: &str) -> u64 {
    let want = blake3::hash(want);
    let arrived = wait_until(600, || {
        fs::read(p.b.m("f")).is_ok_and(|b| blake3::hash(&b) == want)
    });
    assert!(arrived, "{what}: B never showed A's change");
    let count = || p.proxies.iter().map(|x| x.count()).sum::<u64>();
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = count();
        if now == last {
            return now - before;
        }
        last = now;
    }
}

/// One change made through A's mount while both are mounted and connected: syncfs's
/// bytes on the wire beside rsync -z and xdelta3 over the same old and new versions.
fn live_one(what: &str, old: &[u8], change: impl FnOnce(&Path) -> Vec<u8>) {
    let mut p = Pair::mounted(true);
    fs::write(p.a.m("f"), old).unwrap();
    let count = || p.proxies.iter().map(|x| x.count()).sum::<u64>();
    settle(&p, old, count(), what);
    let before = count();
    let new = change(&p.a.m("f"));
    let syncfs = settle(&p, &new, before, what);
    p.a.unmount();
    p.b.unmount();
    let t = tempfile::tempdir().unwrap();
    let (rx, ry) = (t.path().join("rx"), t.path().join("ry"));
    fs::create_dir_all(&rx).unwrap();
    fs::create_dir_all(&ry).unwrap();
    fs::write(rx.join("f"), &new).unwrap();
    fs::write(ry.join("f"), old).unwrap();
    let earlier = std::time::SystemTime::now() - Duration::from_secs(3600);
    let f = fs::File::options().write(true).open(ry.join("f")).unwrap();
    f.set_modified(earlier).unwrap(); // else rsync's quick check skips a same-size file
    let xd = xdelta3(&ry.join("f"), &rx.join("f"));
    let rsync = rsync_bytes(&rx, &ry);
    report(what, &format!("{syncfs:>10} B"), syncfs, rsync, xd);
}

/// Live mode of the big-file workloads (issue "fewest bytes"): both mounted, the change
/// made through A's mount as applications make it.
#[test]
#[ignore]
fn live_big_files() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mib = |n: usize| n << 20;
    let text = words(mib(32), 1);
    live_one("100 B inserted at the top of 32 MiB of text", &text, |f| {
        let mut new = words(100, 2);
        new.extend_from_slice(&fs::read(f).unwrap());
        let mut h = fs::File::create(f).unwrap(); // truncate + rewrite
        h.write_all(&new).unwrap();
        h.sync_all().unwrap();
        new
    });
    let doc = words(mib(16), 3);
    live_one("16 MiB document, 20 B changed, temp + rename", &doc, |f| {
        let mut new = fs::read(f).unwrap();
        new[mib(8)..mib(8) + 20].copy_from_slice(b"twenty changed bytes");
        let tmp = f.with_file_name(".f.tmp");
        fs::write(&tmp, &new).unwrap();
        fs::rename(&tmp, f).unwrap();
        new
    });
    let big = common::random_bytes(mib(256), 11);
    live_one("4 KiB random edit in a 256 MiB file", &big, |f| {
        let patch = common::random_bytes(4096, 12);
        let h = fs::File::options().write(true).open(f).unwrap();
        h.write_all_at(&patch, (mib(100) + 12_345) as u64).unwrap();
        h.sync_all().unwrap();
        let mut new = big.clone();
        new[mib(100) + 12_345..mib(100) + 12_345 + 4096].copy_from_slice(&patch);
        new
    });
    let log = words(mib(64), 5);
    live_one("1 MiB of text appended to a 64 MiB log", &log, |f| {
        let more = words(mib(1), 6);
        let mut h = fs::File::options().append(true).open(f).unwrap();
        h.write_all(&more).unwrap();
        h.sync_all().unwrap();
        let mut new = log.clone();
        new.extend_from_slice(&more);
        new
    });
}
