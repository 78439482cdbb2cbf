//! Whole updates that replace a file ([`super::Expect::Replace`]): the path always
//! holds a file, the replaced one is kept in the archive, a local write since the
//! decision refuses the update, and recovery never writes into an archived inode.

use super::tests::{hash, plant, rp, update, Env};
use super::*;
use crate::versions::{list, Archive};
use std::fs;
use std::os::unix::fs::MetadataExt;

/// Records, at each hold, the content at a path (None: no file there).
struct SeeContent(PathBuf, Arc<Mutex<Vec<Option<Vec<u8>>>>>);

impl ApplyHooks for SeeContent {
    fn hold(&self, _ino: u64) -> Box<dyn std::any::Any + Send> {
        self.1.lock().unwrap().push(fs::read(&self.0).ok());
        Box::new(())
    }
    fn invalidate_inode(&self, _ino: u64) {}
    fn invalidate_entry(&self, _parent: u64, _name: &OsStr) {}
}

fn archive(e: &Env) -> Archive {
    Archive::open(&e.dir.join("versions"), 30, 1024).unwrap()
}

/// The archived versions of `f`: (content, inode, links).
fn kept(e: &Env) -> Vec<(Vec<u8>, u64, u64)> {
    let all = list(&e.dir.join("versions"), None).unwrap();
    let md = |k: &crate::versions::Kept| fs::metadata(&k.file).unwrap();
    all.iter()
        .map(|k| (fs::read(&k.file).unwrap(), md(k).ino(), md(k).nlink()))
        .collect()
}

#[test]
fn a_whole_update_replaces_the_file_in_one_step_and_archives_it() {
    let e = Env::new();
    fs::write(e.p("f"), b"ours, made here").unwrap();
    let old_ino = fs::metadata(e.p("f")).unwrap().ino();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut a = e.with_hooks(Arc::new(SeeContent(e.p("f"), seen.clone())));
    a.set_archive(archive(&e));
    let judged = a
        .replaceable(&rp("f"), &Keep::Archive)
        .unwrap()
        .expect("replaceable");
    assert_eq!(judged.ino(), old_ino);
    let new = b"the peer's version".to_vec();
    let u = update("f", None, &new, &[(0, new.len() as u64)]);
    a.apply_update_then(
        &u,
        Some(Expect::Replace(judged, Keep::Archive)),
        &mut || Ok(()),
    )
    .unwrap();
    assert_eq!(e.read("f"), new);
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "held");
    assert!(
        seen.iter()
            .all(|s| s.as_deref() == Some(&b"ours, made here"[..])),
        "the path held our file up to the swap: {seen:?}"
    );
    assert_eq!(kept(&e), vec![(b"ours, made here".to_vec(), old_ino, 1)]);
    assert_eq!(e.staged(), Vec::<String>::new(), "nothing left staged");
}

#[test]
fn a_replace_is_refused_if_the_file_changed_since_it_was_judged() {
    let e = Env::new();
    fs::write(e.p("f"), b"ours").unwrap();
    let mut a = e.with_hooks(Arc::new(NoHooks));
    a.set_archive(archive(&e));
    let judged = a.replaceable(&rp("f"), &Keep::Archive).unwrap().unwrap();
    fs::write(e.p("f"), b"ours, edited since").unwrap(); // same inode, new content
    let u = update("f", None, b"theirs", &[(0, 6)]);
    let res = a.apply_update_then(
        &u,
        Some(Expect::Replace(judged, Keep::Archive)),
        &mut || Ok(()),
    );
    assert!(
        matches!(res, Err(ApplyError::UnknownBase { .. })),
        "{res:?}"
    );
    assert_eq!(e.read("f"), b"ours, edited since");
    assert_eq!(kept(&e), vec![], "nothing archived");
    assert_eq!(e.staged(), Vec::<String>::new());
}

#[test]
fn only_a_lone_non_empty_file_is_replaceable_and_only_with_an_archive() {
    let e = Env::new();
    fs::write(e.p("f"), b"x").unwrap();
    fs::write(e.p("empty"), b"").unwrap();
    fs::write(e.p("linked"), b"y").unwrap();
    fs::hard_link(e.p("linked"), e.p("other")).unwrap();
    let mut a = e.applier();
    assert_eq!(
        a.replaceable(&rp("f"), &Keep::Archive).unwrap(),
        None,
        "no archive"
    );
    a.set_archive(archive(&e));
    assert!(a.replaceable(&rp("f"), &Keep::Archive).unwrap().is_some());
    for p in ["empty", "linked", "missing"] {
        assert_eq!(a.replaceable(&rp(p), &Keep::Archive).unwrap(), None, "{p}");
    }
}

/// A crash between the archive's link and the rename leaves the replaced inode with
/// two names; one before the link leaves it alone at the path. Recovery replaces it
/// either way: the archived version is never written into, nor lost.
#[test]
fn recovery_replaces_rather_than_writing_into_a_kept_file() {
    for linked in [true, false] {
        let e = Env::new();
        fs::write(e.p("f"), b"ours").unwrap();
        let ino = fs::metadata(e.p("f")).unwrap().ino();
        if linked {
            fs::create_dir(e.dir.join("versions")).unwrap();
            fs::hard_link(e.p("f"), e.dir.join("versions/f~20261201-000000")).unwrap();
        }
        let new = b"the peer's whole version".to_vec();
        plant(
            &e,
            "00.verified",
            &update("f", None, &new, &[(0, new.len() as u64)]),
        );
        let a = Applier::open_with(&e.data, &e.staging, Arc::new(NoHooks), Some(archive(&e)));
        let a = a.unwrap();
        assert_eq!(e.read("f"), new, "linked {linked}");
        let kept = kept(&e);
        assert!(!kept.is_empty(), "linked {linked}: kept");
        assert!(
            kept.iter().all(|(body, i, _)| body == b"ours" && *i == ino),
            "linked {linked}: {kept:?}"
        );
        assert_eq!(a.recovered().len(), 1);
        assert_eq!(hash(&e.read("f")), hash(&new));
    }
}

#[test]
fn a_conflict_copy_takes_the_replaced_file_beside_it_in_one_step() {
    let e = Env::new();
    fs::write(e.p("f"), b"").unwrap(); // empty, and no archive: still replaceable
    let ino = fs::metadata(e.p("f")).unwrap().ino();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = e.with_hooks(Arc::new(SeeContent(e.p("f"), seen.clone())));
    let keep = Keep::Beside("f.conflict".into());
    let judged = a.replaceable(&rp("f"), &keep).unwrap().unwrap();
    let u = update("f", None, b"theirs", &[(0, 6)]);
    // a name taken meanwhile: refused, nothing changed
    fs::write(e.p("f.conflict"), b"someone else's").unwrap();
    let expect = Expect::Replace(judged, keep.clone());
    assert!(a
        .apply_update_then(&u, Some(expect.clone()), &mut || Ok(()))
        .is_err());
    assert_eq!(e.read("f"), b"");
    assert_eq!(e.read("f.conflict"), b"someone else's");
    fs::remove_file(e.p("f.conflict")).unwrap();
    a.apply_update_then(&u, Some(expect), &mut || Ok(()))
        .unwrap();
    assert_eq!(e.read("f"), b"theirs");
    assert_eq!(fs::metadata(e.p("f.conflict")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(e.p("f.conflict")).unwrap().nlink(), 1);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|s| s.as_deref() == Some(&b""[..])),
        "{seen:?}"
    );
    assert_eq!(e.staged(), Vec::<String>::new());
}
