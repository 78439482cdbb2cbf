//! Loopback tests of the network layer (mDNS off, every wait bounded).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

use super::{start, NetConfig, NetError, NetEvent, NetHandle};

const PROTO: &str = "/syncfs/test/1";
const LIMIT: Duration = Duration::from_secs(20);

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

fn config(keypair: Keypair, allow: Vec<PeerId>, peers: Vec<Multiaddr>) -> NetConfig {
    NetConfig {
        keypair,
        listen: vec![loopback()],
        peers,
        allow,
        mdns: false,
    }
}

/// Starts a node and waits until it listens; returns its dialable address.
async fn node(cfg: NetConfig) -> (NetHandle, Receiver<NetEvent>, Multiaddr) {
    let (handle, events) = start(cfg).await.unwrap();
    let addrs = timeout(LIMIT, handle.wait_listening())
        .await
        .unwrap()
        .unwrap();
    let addr = addrs[0].clone().with(Protocol::P2p(handle.local_peer_id()));
    (handle, events, addr)
}

/// Waits (bounded) for the first event matching `pred`.
async fn wait_for(events: &mut Receiver<NetEvent>, pred: impl Fn(&NetEvent) -> bool) -> NetEvent {
    let fut = async {
        loop {
            let ev = events.recv().await.expect("event channel closed");
            if pred(&ev) {
                return ev;
            }
        }
    };
    timeout(LIMIT, fut)
        .await
        .expect("timed out waiting for event")
}

#[tokio::test]
async fn two_allowed_nodes_exchange_bytes() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (a, _ea, a_addr) = node(config(ka, vec![pb], vec![])).await;
    let (b, mut eb, _) = node(config(kb, vec![], vec![a_addr])).await;
    assert!(matches!(b.listen_addrs().as_slice(), [_, ..]));
    wait_for(
        &mut eb,
        |e| matches!(e, NetEvent::PeerConnected(p, _) if *p == pa),
    )
    .await;
    assert_eq!(b.connected_peers().await.unwrap(), vec![pa]);

    let mut incoming = a.accept(PROTO).unwrap();
    let reader = tokio::spawn(async move {
        let (from, mut stream) = incoming.next().await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        (from, buf)
    });
    let mut stream = timeout(LIMIT, b.open_stream(pa, PROTO))
        .await
        .unwrap()
        .unwrap();
    stream.write_all(b"hello over libp2p").await.unwrap();
    stream.close().await.unwrap();
    let (from, buf) = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert_eq!(from, pb);
    assert_eq!(buf, b"hello over libp2p");
}

#[tokio::test]
async fn open_stream_dials_allowed_peer_on_demand() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (a, _ea, a_addr) = node(config(ka, vec![pb], vec![])).await;
    let (b, _eb, _) = node(config(kb, vec![pa], vec![])).await;
    b.add_peer(a_addr).await.unwrap();
    let _incoming = a.accept(PROTO).unwrap();
    let stream = timeout(LIMIT, b.open_stream(pa, PROTO)).await.unwrap();
    assert!(stream.is_ok(), "{stream:?}");
}

/// The TCP port of a listen address.
fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP address")
}

/// Ports (local, peer) of the IPv4 socket `fd`.
fn ports(fd: i32) -> [Option<u16>; 2] {
    let port = |f: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32| {
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe { f(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) };
        (rc == 0 && sa.sin_family == libc::AF_INET as u16).then(|| u16::from_be(sa.sin_port))
    };
    [port(libc::getsockname), port(libc::getpeername)]
}

/// The retransmission timeout caps of this process's connected TCP sockets from or to
/// `port` (not the listening one).
fn rto_caps(port: u16) -> Vec<u32> {
    let mut caps = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(cap) = crate::sys::tcp_rto_max(&sock) {
            let [local, peer] = ports(fd);
            if peer.is_some() && (local == Some(port) || peer == Some(port)) {
                caps.push(cap);
            }
        }
    }
    caps
}

/// Both ends of a connection (dialed and accepted) retransmit lost data within
/// `RTO_MAX_MS` of a restored link, however long it was cut.
#[tokio::test]
async fn connections_cap_their_retransmission_backoff() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let pa = ka.public().to_peer_id();
    let (a, _ea, a_addr) = node(config(ka, vec![kb.public().to_peer_id()], vec![])).await;
    let (b, _eb, _) = node(config(kb, vec![pa], vec![])).await;
    b.add_peer(a_addr.clone()).await.unwrap();
    let _incoming = a.accept(PROTO).unwrap();
    let stream = timeout(LIMIT, b.open_stream(pa, PROTO)).await.unwrap();
    assert!(stream.is_ok(), "{stream:?}");
    let port = tcp_port(&a_addr);
    let caps = rto_caps(port);
    assert!(caps.len() >= 2, "both ends of the connection: {caps:?}");
    assert!(caps.iter().all(|c| *c == super::RTO_MAX_MS), "{caps:?}");
}

/// Connected TCP sockets of this process from or to one of `ports` (not listening ones).
fn connections(of: [u16; 2]) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let [local, peer] = ports(fd);
        let ours = |p: Option<u16>| p.is_some_and(|p| of.contains(&p));
        n += usize::from(peer.is_some() && (ours(local) || ours(peer)));
    }
    n
}

/// Two peers that know each other and want a stream at the same moment make one
/// connection, not one each (each costs its handshakes on a slow link): the one with
/// the larger PeerId waits for the other's dial.
#[tokio::test]
async fn peers_dialing_each_other_at_once_make_one_connection() {
    for _ in 0..3 {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
        let (a, _ea, a_addr) = node(config(ka, vec![pb], vec![])).await;
        let (b, _eb, b_addr) = node(config(kb, vec![pa], vec![])).await;
        let (_ia, _ib) = (a.accept(PROTO).unwrap(), b.accept(PROTO).unwrap());
        let (ra, rb) = tokio::join!(a.add_peer(b_addr.clone()), b.add_peer(a_addr.clone()));
        ra.unwrap();
        rb.unwrap();
        let (sa, sb) = tokio::join!(
            timeout(LIMIT, a.open_stream(pb, PROTO)),
            timeout(LIMIT, b.open_stream(pa, PROTO))
        );
        assert!(sa.unwrap().is_ok() && sb.unwrap().is_ok());
        tokio::time::sleep(super::event_loop::DIAL_DEFER * 2).await;
        // both ends of one connection are sockets of this process
        let n = connections([tcp_port(&a_addr), tcp_port(&b_addr)]);
        assert_eq!(n, 2, "connected sockets between A and B");
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn unallowlisted_peer_is_refused() {
    let (ka, kc) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pc) = (ka.public().to_peer_id(), kc.public().to_peer_id());
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let (a, mut ea, a_addr) = node(config(ka, vec![stranger], vec![])).await;
    let mut incoming = a.accept(PROTO).unwrap();
    // C allows A and dials it, but A does not allow C.
    let (c, _ec, _) = node(config(kc, vec![], vec![a_addr])).await;

    let refused = wait_for(&mut ea, |e| matches!(e, NetEvent::Refused(_))).await;
    assert_eq!(refused, NetEvent::Refused(pc));
    // A drops the connection right after the handshake: no stream opens.
    let opened = timeout(LIMIT, c.open_stream(pa, PROTO)).await;
    assert!(matches!(opened, Ok(Err(_))), "{opened:?}");
    let got = timeout(Duration::from_secs(2), incoming.next()).await;
    assert!(got.is_err(), "refused peer opened a stream");
    assert!(!a.connected_peers().await.unwrap().contains(&pc));
}

#[tokio::test]
async fn disconnect_is_reported_and_peer_reconnects_after_restart() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (_pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (a, mut ea, a_addr) = node(config(ka, vec![pb], vec![])).await;
    let (b, _eb, _) = node(config(kb.clone(), vec![], vec![a_addr.clone()])).await;
    wait_for(
        &mut ea,
        |e| matches!(e, NetEvent::PeerConnected(p, _) if *p == pb),
    )
    .await;

    b.shutdown().await;
    wait_for(&mut ea, |e| *e == NetEvent::PeerDisconnected(pb)).await;
    assert!(a.connected_peers().await.unwrap().is_empty());

    // Same identity, new port: B' dials A again and A accepts it.
    let (b2, _eb2, _) = node(config(kb, vec![], vec![a_addr])).await;
    wait_for(
        &mut ea,
        |e| matches!(e, NetEvent::PeerConnected(p, _) if *p == pb),
    )
    .await;
    let mut incoming = b2.accept(PROTO).unwrap();
    let reader = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    });
    let mut s = timeout(LIMIT, a.open_stream(pb, PROTO))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"again").await.unwrap();
    s.close().await.unwrap();
    assert_eq!(timeout(LIMIT, reader).await.unwrap().unwrap(), b"again");
}

#[tokio::test]
async fn configured_peer_is_redialed_with_backoff() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let pb = kb.public().to_peer_id();
    let (b, _eb, b_addr) = node(config(kb.clone(), vec![], vec![])).await;
    // A keeps B connected; B does not know A (allowlist only).
    let pa = ka.public().to_peer_id();
    b.shutdown().await;
    drop(b);
    let (a, mut ea, _) = node(config(ka, vec![], vec![b_addr.clone()])).await;
    // B is down: A keeps trying without the loop stopping.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(a.connected_peers().await.unwrap().is_empty());

    // Bring B back on the same port; A's backoff redial must find it.
    let mut cfg = config(kb, vec![pa], vec![]);
    cfg.listen = vec![b_addr.iter().take(2).collect()];
    let (_b2, _eb2, _) = node(cfg).await;
    wait_for(
        &mut ea,
        |e| matches!(e, NetEvent::PeerConnected(p, _) if *p == pb),
    )
    .await;
}

/// A stream wanted while a dial is refused (the peer not up yet), or right after,
/// waits for the scheduled redial instead of failing or dialing again at once, and
/// opens once the peer is up.
#[tokio::test]
async fn an_open_during_or_after_a_refused_dial_joins_the_redial() {
    for wait_ms in [0, 150] {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a_at: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let b_cfg = config(kb, vec![], vec![a_at.clone().with(Protocol::P2p(pa))]);
        let (b, _eb, _) = node(b_cfg).await;
        // (at once: the open joins the first dial; later, the redial it scheduled)
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let open = tokio::spawn(async move { b.open_stream(pa, PROTO).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!open.is_finished(), "the open failed with a refused dial");
        let mut cfg = config(ka, vec![pb], vec![]);
        cfg.listen = vec![a_at];
        let (a, _ea, _) = node(cfg).await;
        let _incoming = a.accept(PROTO).unwrap();
        let opened = timeout(LIMIT, open).await.unwrap().unwrap();
        assert!(opened.is_ok(), "{opened:?}");
    }
}

#[tokio::test]
async fn bad_inputs_are_typed_errors() {
    let (a, _ea, _) = node(config(Keypair::generate_ed25519(), vec![], vec![])).await;
    let no_peer: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    assert!(matches!(
        a.add_peer(no_peer).await,
        Err(NetError::MissingPeerId(_))
    ));
    assert!(matches!(
        a.accept("no-slash"),
        Err(NetError::InvalidProtocol(_))
    ));
    let _first = a.accept(PROTO).unwrap();
    assert!(matches!(
        a.accept(PROTO),
        Err(NetError::AlreadyAccepting(_))
    ));
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(a.connected_peers().await, Err(NetError::Closed)));
}

#[tokio::test]
async fn a_flood_of_unfinished_handshakes_is_cut_off_and_peers_still_connect() {
    use tokio::io::AsyncReadExt as _;
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (_a, _ea, a_addr) = node(config(ka, vec![pb], vec![])).await;
    let port = tcp_port(&a_addr);
    // 40 connections that never say a word: past the cap, they are closed at once
    let mut socks = Vec::new();
    for _ in 0..40 {
        socks.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let mut closed = 0;
    for s in &mut socks {
        let mut buf = [0u8; 64];
        loop {
            match timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue, // the multistream header: keep reading
                Err(_) => break,       // still open, waiting for us
            }
        }
    }
    let cap = super::behaviour::MAX_PENDING_INCOMING as usize;
    assert!(
        closed >= 40 - cap,
        "only {closed} of 40 stalled handshakes were cut off"
    );
    // an allowed peer still gets in
    let (b, mut eb, _) = node(config(kb, vec![], vec![a_addr])).await;
    drop(socks);
    wait_for(
        &mut eb,
        |e| matches!(e, NetEvent::PeerConnected(p, _) if *p == pa),
    )
    .await;
    assert_eq!(b.connected_peers().await.unwrap(), vec![pa]);
}
