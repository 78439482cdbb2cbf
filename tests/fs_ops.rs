//! Each FUSE operation through a real mount, checked against the backing directory,
//! including the errno of failures.

mod common;
use common::{journal_snapshot, Node};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

fn mounted() -> Node {
    let mut n = Node::new();
    n.mount();
    n
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .expect("os error")
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn create_write_read_append_truncate() {
    let n = mounted();
    fs::write(n.m("f"), b"hello world").unwrap();
    assert_eq!(fs::read(n.m("f")).unwrap(), b"hello world");
    assert_eq!(fs::read(n.data().join("f")).unwrap(), b"hello world");
    let mut f = OpenOptions::new().append(true).open(n.m("f")).unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(fs::read(n.m("f")).unwrap(), b"hello world!!");
    let f = OpenOptions::new().write(true).open(n.m("f")).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::metadata(n.m("f")).unwrap().len(), 5);
    f.set_len(8192).unwrap();
    let mut buf = Vec::new();
    File::open(n.m("f")).unwrap().read_to_end(&mut buf).unwrap();
    assert_eq!(&buf[..5], b"hello");
    assert!(buf[5..].iter().all(|b| *b == 0) && buf.len() == 8192);
    // write-only open (the writeback cache opens it read-write underneath)
    let f = OpenOptions::new().write(true).open(n.m("f")).unwrap();
    f.write_all_at(b"XY", 1).unwrap();
    drop(f);
    assert_eq!(&fs::read(n.data().join("f")).unwrap()[..5], b"hXYlo");
}

#[test]
fn errors_have_the_right_errno() {
    let n = mounted();
    assert_eq!(errno(fs::read(n.m("missing"))), libc::ENOENT);
    fs::create_dir(n.m("d")).unwrap();
    assert_eq!(errno(fs::create_dir(n.m("d"))), libc::EEXIST);
    fs::write(n.m("d/x"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(n.m("d"))), libc::ENOTEMPTY);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(n.m("d"))),
        libc::EISDIR
    );
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(n.m("d/x"))
        ),
        libc::EEXIST
    );
    assert_eq!(errno(fs::remove_file(n.m("d"))), libc::EISDIR);
    assert_eq!(errno(fs::read_dir(n.m("d/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(n.m("d"), n.m("d/x/y"))), libc::ENOTDIR);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let n = mounted();
    fs::write(n.m("secret"), b"s").unwrap();
    fs::set_permissions(n.m("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&n.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("cat")
        .arg(n.m("secret"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = std::process::Command::new("touch")
        .arg(n.m("new"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody created a file in a 0755 root dir"
    );
    // a world-writable dir: the file belongs to its creator
    fs::create_dir(n.m("pub")).unwrap();
    fs::set_permissions(n.m("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    let st = std::process::Command::new("touch")
        .arg(n.m("pub/mine"))
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(st.success());
    let md = fs::metadata(n.data().join("pub/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

#[test]
fn chmod_chown_utimens() {
    let n = mounted();
    fs::write(n.m("f"), b"x").unwrap();
    fs::set_permissions(n.m("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(n.data().join("f")).unwrap().mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::chown(n.m("f"), Some(1234), Some(4321)).unwrap();
    let md = fs::metadata(n.data().join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    // set mtime only (atime UTIME_OMIT), then atime only
    let before_atime = fs::metadata(n.m("f")).unwrap().atime();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    ];
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c(&n.m("f")).as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0);
    let md = fs::metadata(n.data().join("f")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 5));
    assert_eq!(md.atime(), before_atime);
    let times = [
        libc::timespec {
            tv_sec: 2_000_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c(&n.m("f")).as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0);
    let md = fs::metadata(n.data().join("f")).unwrap();
    assert_eq!((md.atime(), md.mtime()), (2_000_000_000, 1_000_000_000));
}

#[test]
fn rename_variants() {
    let n = mounted();
    fs::write(n.m("a"), b"A").unwrap();
    fs::write(n.m("b"), b"B").unwrap();
    let rename2 = |from: &str, to: &str, flags: u32| unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&n.m(from)).as_ptr(),
            libc::AT_FDCWD,
            c(&n.m(to)).as_ptr(),
            flags,
        )
    };
    assert_eq!(rename2("a", "b", libc::RENAME_NOREPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(rename2("a", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(n.m("a")).unwrap(), b"B");
    assert_eq!(fs::read(n.m("b")).unwrap(), b"A");
    fs::rename(n.m("a"), n.m("b")).unwrap();
    assert_eq!(fs::read(n.m("b")).unwrap(), b"B");
    assert!(!n.data().join("a").exists());
    fs::create_dir_all(n.m("x/y")).unwrap();
    fs::rename(n.m("b"), n.m("x/y/c")).unwrap();
    fs::rename(n.m("x"), n.m("z")).unwrap();
    assert_eq!(fs::read(n.m("z/y/c")).unwrap(), b"B");
    assert_eq!(fs::read(n.data().join("z/y/c")).unwrap(), b"B");
}

#[test]
fn links_share_one_inode() {
    let n = mounted();
    fs::write(n.m("f"), b"data").unwrap();
    fs::hard_link(n.m("f"), n.m("g")).unwrap();
    let (a, b) = (
        fs::metadata(n.m("f")).unwrap(),
        fs::metadata(n.m("g")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    fs::remove_file(n.m("f")).unwrap();
    assert_eq!(fs::metadata(n.m("g")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("g", n.m("s")).unwrap();
    assert_eq!(fs::read_link(n.m("s")).unwrap(), Path::new("g"));
    assert_eq!(fs::read(n.m("s")).unwrap(), b"data");
    assert!(fs::symlink_metadata(n.data().join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn readdir_lists_everything() {
    let n = mounted();
    for i in 0..500 {
        fs::write(n.m(&format!("f{i:03}")), b"").unwrap();
    }
    let mut names: Vec<_> = fs::read_dir(&n.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 500);
    assert_eq!(names[0], "f000");
    assert_eq!(names[499], "f499");
}

#[test]
fn fifo_statfs_xattr_fallocate_lseek_mmap() {
    let n = mounted();
    let rc = unsafe { libc::mkfifo(c(&n.m("p")).as_ptr(), 0o644) };
    assert_eq!(rc, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(n.data().join("p")).unwrap().file_type()
    ));
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(&n.mnt).as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0);

    fs::write(n.m("f"), b"x").unwrap();
    let (name, val) = (CString::new("user.k").unwrap(), b"v1");
    let rc = unsafe {
        libc::setxattr(
            c(&n.m("f")).as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            2,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 16];
    let len = unsafe {
        libc::getxattr(
            c(&n.m("f")).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            16,
        )
    };
    assert_eq!(&buf[..len as usize], b"v1");
    let missing = CString::new("user.none").unwrap();
    let rc = unsafe {
        libc::getxattr(
            c(&n.m("f")).as_ptr(),
            missing.as_ptr(),
            buf.as_mut_ptr().cast(),
            16,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(n.m("f"))
        .unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    f.write_all_at(b"end", (4 << 20) - 3).unwrap();
    let mut g = File::open(n.m("f")).unwrap();
    assert_eq!(g.seek(SeekFrom::End(0)).unwrap(), 4 << 20);

    // mmap write then read back through the backing dir
    let len = 4 << 20;
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    unsafe { std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), (p as *mut u8).add(8192), 4) };
    assert_eq!(unsafe { libc::msync(p, len, libc::MS_SYNC) }, 0);
    unsafe { libc::munmap(p, len) };
    drop(f);
    let mut b = [0u8; 4];
    File::open(n.data().join("f"))
        .unwrap()
        .read_exact_at(&mut b, 8192)
        .unwrap();
    assert_eq!(&b, b"MMAP");
}

#[test]
fn very_long_relative_paths_work() {
    // a 4,000-byte path relative to the mount root (longer than most absolute paths allow)
    let n = mounted();
    let root = File::open(&n.mnt).unwrap();
    use std::os::fd::AsRawFd;
    let comp = "d".repeat(200);
    let mut rel = String::new();
    while rel.len() + comp.len() + 1 < 3840 {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&comp);
        let rc = unsafe {
            libc::mkdirat(
                root.as_raw_fd(),
                CString::new(rel.clone()).unwrap().as_ptr(),
                0o755,
            )
        };
        assert_eq!(
            rc,
            0,
            "mkdirat at {} bytes: {}",
            rel.len(),
            std::io::Error::last_os_error()
        );
    }
    let leaf = "f".repeat((4094 - rel.len()).min(255));
    rel.push('/');
    rel.push_str(&leaf);
    let cpath = CString::new(rel.clone()).unwrap();
    let fd = unsafe {
        libc::openat(
            root.as_raw_fd(),
            cpath.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert!(
        fd >= 0,
        "openat {} bytes: {}",
        rel.len(),
        std::io::Error::last_os_error()
    );
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all_at(b"deep", 0).unwrap();
    drop(f);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::fstatat(root.as_raw_fd(), cpath.as_ptr(), &mut st, 0) },
        0
    );
    assert_eq!(st.st_size, 4);
    assert!(rel.len() > 4000, "{}", rel.len());
}

#[test]
fn journal_records_ranges_and_ops() {
    let mut n = Node::new();
    fs::write(n.data().join("big"), vec![7u8; 1 << 20]).unwrap();
    n.mount();
    let f = OpenOptions::new().write(true).open(n.m("big")).unwrap();
    f.write_all_at(&[1; 100], 4096).unwrap();
    f.write_all_at(&[1; 100], 4196).unwrap(); // adjacent: coalesces
    f.write_all_at(&[1; 10], 500_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(n.m("d")).unwrap();
    fs::rename(n.m("big"), n.m("d/big2")).unwrap();
    n.unmount();
    let snap = journal_snapshot(&n.store);
    let (_, e) = snap
        .files
        .iter()
        .find(|(_, e)| e.path.as_bytes() == b"d/big2")
        .expect("entry follows rename");
    let ranges: Vec<_> = e.ranges.iter().collect();
    // the writeback cache may widen a write to page boundaries, never to the whole file
    assert!(
        e.ranges.covers(4096, 4296) && e.ranges.covers(500_000, 500_010),
        "{ranges:?}"
    );
    assert!(e.ranges.len_bytes() <= 4 * 4096 * 2, "{ranges:?}");
    let kinds: Vec<_> = snap.meta.iter().map(|(_, op)| op.kind()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k}: {kinds:?}"))
    };
    assert!(pos("mkdir") < pos("rename"), "{kinds:?}");
    assert!(
        snap.meta.windows(2).all(|w| w[0].0 < w[1].0),
        "sequence numbers increase"
    );
}

#[test]
fn sigterm_unmounts_and_stale_mount_is_cleared() {
    let mut n = mounted();
    fs::write(n.m("f"), b"x").unwrap();
    n.kill9();
    assert!(
        common::is_fuse_mounted(&n.mnt),
        "kill -9 leaves the mount behind"
    );
    n.mount(); // clears the stale mount first
    assert_eq!(fs::read(n.m("f")).unwrap(), b"x");
    n.unmount();
    assert!(!common::is_fuse_mounted(&n.mnt));
}

#[test]
fn sigterm_during_the_first_scan_stops_cleanly() {
    let mut n = common::Node::new();
    for d in 0..40 {
        let dir = n.data().join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            fs::write(
                dir.join(format!("f{f}")),
                common::random_bytes(4096, d * 1000 + f),
            )
            .unwrap();
        }
    }
    n.spawn(&[], &[], &[]);
    let sock = n.store.join("control.sock");
    let scanning = common::wait_until(60, || {
        syncfs::control::query(&sock).is_some_and(|s| s.scan.running && s.scan.seen > 0)
    });
    assert!(scanning, "status never showed the scan: {}", n.log());
    n.unmount(); // SIGTERM: must exit 0 with nothing mounted
    assert!(n.log().contains("stopping during the scan"), "{}", n.log());
    n.mount(); // the next mount scans again and comes up
    assert_eq!(
        fs::read(n.m("d3/f7")).unwrap(),
        common::random_bytes(4096, 3007)
    );
    n.unmount();
}

#[test]
fn unprivileged_write_and_truncate_drop_setuid() {
    let n = mounted();
    let mode = |p: &str| fs::metadata(n.data().join(p)).unwrap().mode() & 0o7777;
    for f in ["w", "t", "r"] {
        fs::write(n.m(f), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(n.m(f), fs::Permissions::from_mode(0o6777)).unwrap();
    }
    let nobody = |cmd: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    };
    nobody(&format!("echo x >> {}", n.m("w").display()));
    nobody(&format!("truncate -s 2 {}", n.m("t").display()));
    assert_eq!(mode("w"), 0o0777, "write by nobody drops setuid and setgid");
    assert_eq!(
        mode("t"),
        0o0777,
        "truncate by nobody drops setuid and setgid"
    );
    let f = OpenOptions::new().append(true).open(n.m("r")).unwrap();
    f.write_all_at(b"root", 0).unwrap();
    drop(f);
    assert_eq!(mode("r"), 0o6777, "root keeps them (CAP_FSETID)");
}

#[test]
fn unlinked_open_file_takes_attribute_changes() {
    let n = mounted();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(n.m("tmp"))
        .unwrap();
    f.write_all_at(b"0123456789", 0).unwrap();
    fs::remove_file(n.m("tmp")).unwrap();
    f.set_len(4).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(
        (md.len(), md.mode() & 0o777, md.mtime()),
        (4, 0o600, 1_000_000)
    );
    let mut s = String::new();
    (&f).seek(SeekFrom::Start(0)).unwrap();
    (&f).read_to_string(&mut s).unwrap();
    assert_eq!(s, "0123");
    assert!(!n.data().join("tmp").exists());
}

#[test]
fn rewinddir_sees_new_entries() {
    let n = mounted();
    fs::write(n.m("a"), b"").unwrap();
    let d = unsafe { libc::opendir(c(&n.mnt).as_ptr()) };
    assert!(!d.is_null());
    let names = |d: *mut libc::DIR| {
        let mut v = Vec::new();
        loop {
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            v.push(name.to_string_lossy().into_owned());
        }
        v.retain(|x| x != "." && x != "..");
        v.sort();
        v
    };
    assert_eq!(names(d), ["a"]);
    fs::write(n.m("b"), b"").unwrap();
    unsafe { libc::rewinddir(d) };
    assert_eq!(names(d), ["a", "b"]);
    unsafe { libc::closedir(d) };
}

#[test]
fn symlink_times_set_without_following() {
    let n = mounted();
    fs::write(n.m("target"), b"t").unwrap();
    std::os::unix::fs::symlink("target", n.m("link")).unwrap();
    let before = fs::metadata(n.data().join("target")).unwrap().mtime();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 0,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(&n.m("link")).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(
        fs::symlink_metadata(n.data().join("link")).unwrap().mtime(),
        1_234_567_890
    );
    assert_eq!(
        fs::metadata(n.data().join("target")).unwrap().mtime(),
        before,
        "the target is untouched"
    );
}
