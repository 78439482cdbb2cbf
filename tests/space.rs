//! Space stays bounded: after thousands of edit/sync rounds the store's overhead
//! (journal with sled, staging, pre-images) is small, and `syncfs status` reports it.

mod common;
use common::{hash_of, syncfs, wait_until, Pair};
use rand::{Rng, SeedableRng};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

#[test]
fn overhead_stays_bounded_over_thousands_of_edits() {
    let p = Pair::mounted(false);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let data: Vec<u8> = (0..4u32 << 20).map(|_| rng.gen()).collect();
    fs::write(p.a.m("f.bin"), &data).unwrap();
    for round in 0..500 {
        let f = OpenOptions::new().write(true).open(p.a.m("f.bin")).unwrap();
        for _ in 0..4 {
            let off = rng.gen_range(0..(4u64 << 20) - 4096);
            f.write_all_at(&rng.gen::<[u8; 32]>().repeat(128), off)
                .unwrap();
        }
        drop(f);
        if round % 10 == 0 {
            fs::write(p.a.m("tmp"), b"short-lived").unwrap();
            fs::remove_file(p.a.m("tmp")).unwrap();
            fs::write(
                p.a.m(&format!("small{}", round % 50)),
                rng.gen::<[u8; 16]>(),
            )
            .unwrap();
        }
        let ok = wait_until(30, || {
            hash_of(&p.b.data().join("f.bin")) == hash_of(&p.a.data().join("f.bin"))
        });
        assert!(
            ok,
            "round {round}\nA status: {:?}\nB status: {:?}\nA:\n{}\nB:\n{}",
            syncfs::control::query(&p.a.store.join("control.sock")).map(|s| s.stats),
            syncfs::control::query(&p.b.store.join("control.sock")).map(|s| s.stats),
            common::tail(&p.a.log(), 120),
            common::tail(&p.b.log(), 120)
        );
    }
    // let the last acks and a journal checkpoint land
    std::thread::sleep(std::time::Duration::from_secs(2));
    let a = syncfs::control::query(&p.a.store.join("control.sock")).expect("A answers status");
    let b = syncfs::control::query(&p.b.store.join("control.sock")).expect("B answers status");
    eprintln!("after 2000 edits: A {:?}, B {:?}", a.overhead, b.overhead);
    assert_eq!(a.stats.queued, 0, "everything was sent: {:?}", a.stats);
    assert_eq!(a.overhead.preimages, 0, "pre-images are released at ack");
    let staged: Vec<_> = fs::read_dir(p.b.store.join("staging"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("applied-"))
        .collect();
    assert!(staged.is_empty(), "staging is emptied: {staged:?}");
    assert!(
        b.overhead.staging <= 8192,
        "only the applied-ops record stays"
    );
    for o in [&a.overhead, &b.overhead] {
        assert!(o.total() < 48 << 20, "overhead {o:?} for a 4 MiB folder");
    }
    let text = syncfs(&["status", p.a.store.to_str().unwrap()]);
    assert!(
        text.contains("peer link:   up") && text.contains("overhead:"),
        "{text}"
    );
}
