//! Two network namespaces joined by a veth pair, for tests that need a real link to
//! measure, slow down (`tc tbf`) or cut (`ip link set down`, or `iptables` drops).
//! Needs root, iproute2 and iptables.

use super::{folder_id, peer_id, set_config, syncfs, Node};
use std::process::Command;

/// Two network namespaces and a veth pair between them; deleted on drop (the veth
/// goes with its namespace).
pub struct Net {
    /// The namespaces' names.
    pub ns: [String; 2],
    /// The veth ends, one in each.
    pub dev: [String; 2],
    /// Their addresses.
    pub ip: [String; 2],
}

/// Runs a command; panics unless it succeeds.
pub fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status();
    assert!(st.is_ok_and(|s| s.success()), "{args:?} failed");
}

impl Net {
    /// Namespaces and devices named from `tag` (≤ 4 characters) and the process id,
    /// addresses 10.233.`subnet`.1 and .2.
    pub fn new(tag: &str, subnet: u8) -> Net {
        let id = std::process::id() % 100_000;
        let net = Net {
            ns: [format!("sf{tag}-a-{id}"), format!("sf{tag}-b-{id}")],
            dev: [format!("sf{tag}a{id}"), format!("sf{tag}b{id}")],
            ip: [format!("10.233.{subnet}.1"), format!("10.233.{subnet}.2")],
        };
        for ns in &net.ns {
            run(&["ip", "netns", "add", ns]);
        }
        let (a, b) = (&net.dev[0], &net.dev[1]);
        run(&[
            "ip", "link", "add", a, "netns", &net.ns[0], "type", "veth", "peer", "name", b,
            "netns", &net.ns[1],
        ]);
        for i in 0..2 {
            let (ns, dev) = (&net.ns[i], &net.dev[i]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", net.ip[i]),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            // Segmentation offloads off: counters see real frames, one header each.
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
                ])
                .args(["gro", "off"])
                .output();
        }
        net
    }

    /// `nsenter --net=...` for namespace `i`.
    pub fn enter(&self, i: usize) -> String {
        format!("--net=/run/netns/{}", self.ns[i])
    }

    /// Takes end `i` of the veth down (packets vanish; open connections see nothing) or
    /// back up.
    pub fn set_up(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&["ip", "-n", &self.ns[i], "link", "set", &self.dev[i], state]);
    }

    /// Partitions the two (`iptables -j DROP` of everything arriving in either
    /// namespace: packets vanish silently, as on a dead link) or heals them.
    #[allow(dead_code)]
    pub fn partition(&self, on: bool) {
        let verb = if on { "-I" } else { "-D" };
        for ns in &self.ns {
            run(&[
                "ip", "netns", "exec", ns, "iptables", verb, "INPUT", "-j", "DROP",
            ]);
        }
    }

    /// Shapes what end `i` sends to `rate` (a `tc` rate such as `200mbit`) with tbf.
    pub fn shape(&self, i: usize, rate: &str) {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns[i],
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.dev[i],
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "256kb",
            "latency",
            "100ms",
        ]);
    }

    /// Bytes A's end of the veth has sent so far (A -> B).
    pub fn tx_a(&self) -> u64 {
        self.tx(0)
    }

    /// Bytes end `i` of the veth has sent so far, from `/proc/net/dev` as seen in its
    /// namespace (sysfs would show this namespace's devices).
    pub fn tx(&self, i: usize) -> u64 {
        let out = Command::new("nsenter")
            .args([&self.enter(i), "cat", "/proc/net/dev"])
            .output()
            .expect("nsenter");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{}:", self.dev[i])))
            .unwrap_or_else(|| panic!("no {} in {text}", self.dev[i]));
        let tx = line.split_whitespace().nth(8).expect("tx_bytes field");
        tx.parse().expect("tx_bytes")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A and B configured as each other's peer over the veth.
pub fn pair(net: &Net) -> (Node, Node) {
    let a = Node::new();
    let b = Node::with_init(&["--join", &folder_id(&a.store)]);
    for (n, i, peer) in [(&a, 0, &b), (&b, 1, &a)] {
        let listen = format!("[\"/ip4/{}/tcp/4801\"]", net.ip[i]);
        set_config(&n.store, "listen", &listen);
        set_config(&n.store, "mdns", "false");
        set_config(&n.store, "settle_ms", "100");
        let addr = format!(
            "/ip4/{}/tcp/4801/p2p/{}",
            net.ip[1 - i],
            peer_id(&peer.store)
        );
        syncfs(&["add-peer", n.store.to_str().unwrap(), &addr]);
    }
    (a, b)
}
