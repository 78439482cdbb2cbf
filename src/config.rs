//! The store's `config.toml`: one options struct, read by `mount`, written with
//! commented defaults by `init`.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors reading or writing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: toml::de::Error,
    },
    /// A setting has a value it cannot take.
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Everything a store is configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder id (32 hex digits): only stores sharing it sync with each other.
    pub folder_id: String,
    /// A name for this node, shown to peers and in status.
    #[serde(default = "default_name")]
    pub name: String,
    /// Multiaddrs to listen on for peers.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to keep connected: multiaddrs ending in `/p2p/<PeerId>`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Find allowlisted peers on the LAN with mDNS.
    #[serde(default = "yes")]
    pub mdns: bool,
    /// A file is sent once it has been quiet this long (milliseconds).
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    /// FUSE session threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Honour setuid/setgid bits of files in the mount (mounted `nosuid` otherwise).
    #[serde(default)]
    pub allow_suid: bool,
    /// Honour device nodes in the mount (mounted `nodev` otherwise).
    #[serde(default)]
    pub allow_dev: bool,
    /// Apply ownership (chown) sent by peers; never to uid or gid 0.
    #[serde(default)]
    pub sync_ownership: bool,
    /// Largest file a peer may make here, in MiB (at most 1 TiB).
    #[serde(default = "default_max_file_mib")]
    pub max_file_mib: u64,
    /// Days a replaced or deleted version stays in `STORE/versions`.
    #[serde(default = "default_versions_days")]
    pub versions_days: u64,
    /// Most MiB the version archive may hold (the oldest versions go first).
    #[serde(default = "default_versions_max_mib")]
    pub versions_max_mib: u64,
    /// Bandwidth limit per direction, in KiB/s (0: unlimited).
    #[serde(default)]
    pub bwlimit: u64,
    /// The daemon's default log filter (`RUST_LOG` wins).
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

fn default_log_level() -> String {
    "info".into()
}

fn default_versions_days() -> u64 {
    30
}

fn default_versions_max_mib() -> u64 {
    10 << 10
}

fn default_max_file_mib() -> u64 {
    1 << 20
}

fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "syncfs".into())
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4801".into()]
}
fn yes() -> bool {
    true
}
fn default_settle() -> u64 {
    300
}
fn default_threads() -> usize {
    4
}

impl Config {
    /// Defaults for a new store with this folder id.
    pub fn new(folder_id: String) -> Config {
        Config {
            folder_id,
            name: default_name(),
            listen: default_listen(),
            peers: Vec::new(),
            mdns: true,
            settle_ms: default_settle(),
            threads: default_threads(),
            allow_suid: false,
            allow_dev: false,
            sync_ownership: false,
            max_file_mib: default_max_file_mib(),
            versions_days: default_versions_days(),
            versions_max_mib: default_versions_max_mib(),
            bwlimit: 0,
            log_level: default_log_level(),
        }
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: p.clone(),
            source,
        })?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log_level) {
            return Err(ConfigError::Invalid {
                path: p,
                key: "log_level",
                message: format!("{:?} is not a log filter: {e}", cfg.log_level),
            });
        }
        Ok(cfg)
    }

    /// The file text with comments explaining every setting.
    pub fn to_commented_toml(&self) -> String {
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "# syncfs store configuration.\n\
             \n# Only stores with the same folder id sync with each other (`syncfs init --join ID`).\n\
             folder_id = {:?}\n\
             \n# This node's name, shown to peers and in `syncfs status`.\nname = {:?}\n\
             \n# Addresses to listen on for peers (libp2p multiaddrs).\nlisten = [{}]\n\
             \n# Peers to keep connected, each ending in /p2p/<PeerId>; they are also the allowlist.\n\
             # Example: peers = [\"/ip4/192.0.2.7/tcp/4801/p2p/12D3KooW...\"]\npeers = [{}]\n\
             \n# Discover allowlisted peers on the local network with mDNS.\nmdns = {}\n\
             \n# Send a file once it has been quiet (closed, or no writes) for this many milliseconds.\n\
             settle_ms = {}\n\
             \n# FUSE session threads.\nthreads = {}\n\
             \n# Honour setuid/setgid bits and device nodes in the mount (off: mounted nosuid,nodev).\n\
             allow_suid = {}\nallow_dev = {}\n\
             \n# Apply file ownership sent by peers (never uid or gid 0). Off: files keep this\n\
             # node's ownership, and setuid/setgid bits from peers are always stripped.\n\
             sync_ownership = {}\n\
             \n# Largest file a peer may make here, in MiB (at most 1048576, 1 TiB): updates and\n\
             # truncates beyond it are refused before any work.\nmax_file_mib = {}\n\
             \n# The version archive (STORE/versions) keeps every version a peer's change replaced\n\
             # or deleted, and the losers of first pairings: for this many days, and up to this\n\
             # many MiB (the oldest go first). `syncfs versions` lists them.\n\
             versions_days = {}\nversions_max_mib = {}\n\
             \n# Bandwidth limit in KiB/s (like rsync's --bwlimit), each direction on its own:\n\
             # what this node sends to its peers, and what it receives. 0: unlimited.\n\
             # `syncfs mount --bwlimit KIB` overrides it for one run.\nbwlimit = {}\n\
             \n# The daemon's log level (error, warn, info, debug, trace, or a filter such as\n\
             # \"syncfs=debug,info\"); the RUST_LOG environment variable wins over it.\n\
             log_level = {:?}\n",
            self.folder_id, self.name, q(&self.listen), q(&self.peers), self.mdns, self.settle_ms, self.threads,
            self.allow_suid, self.allow_dev, self.sync_ownership, self.max_file_mib,
            self.versions_days, self.versions_max_mib, self.bwlimit, self.log_level
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_defaults_parse_back() {
        let mut c = Config::new("00112233445566778899aabbccddeeff".into());
        c.peers = vec!["/ip4/127.0.0.1/tcp/1/p2p/x".into()];
        let back: Config = toml::from_str(&c.to_commented_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_keys_and_values_name_the_key_and_the_file() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("config.toml");
        let c = Config::new("00112233445566778899aabbccddeeff".into());
        for (bad, key) in [
            ("log_level = \"loud[\"\n", "log_level"),
            ("bogus_key = 1\n", "bogus_key"),
            ("settle_ms = \"fast\"\n", "settle_ms"),
        ] {
            let text = c.to_commented_toml().replace(&format!("\n{key} = "), "\n#");
            std::fs::write(&f, format!("{text}{bad}")).unwrap();
            let e = Config::load(&f).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("config.toml"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<Config>("folder_id = \"x\"\nbogus = 1\n");
        assert!(e.is_err());
    }
}
