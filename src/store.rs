//! The store on disk: `data/` (the backing directory users see through the mount),
//! `journal/` (sled + intent log), `staging/` (updates from the peer being applied),
//! `identity.key` (the node's ed25519 keypair, mode 0600) and `config.toml`.

use crate::config::{Config, ConfigError};
use crate::net::{Keypair, PeerId};
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors creating or opening a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `init` found something already there.
    #[error("{0} already holds a store (or is not empty); refusing to overwrite it")]
    Exists(PathBuf),
    /// Not a store.
    #[error("{0} is not a syncfs store (no config.toml); run `syncfs init` first")]
    NotAStore(PathBuf),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The identity key file is corrupt.
    #[error("identity key {0} is corrupt")]
    BadKey(PathBuf),
    /// The folder id given to `--join` is malformed.
    #[error("folder id must be 32 hex digits, got {0:?}")]
    BadFolderId(String),
    /// The configuration is unreadable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Paths inside one store.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store directory.
    pub dir: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// The store at `dir` (not checked).
    pub fn at(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// Records that this store is mounted at `mountpoint`, so that commands given the
    /// mount point find the store (`syncfs status ~/Sync`).
    pub fn register_mount(&self, mountpoint: &Path) -> std::io::Result<()> {
        let f = mount_record(mountpoint)?;
        std::fs::create_dir_all(f.parent().unwrap_or(Path::new("/")))?;
        let dir = self.dir.canonicalize()?;
        std::fs::write(&f, dir.as_os_str().as_encoded_bytes())
    }

    /// Forgets the record of [`Store::register_mount`].
    pub fn unregister_mount(mountpoint: &Path) {
        if let Ok(f) = mount_record(mountpoint) {
            let _ = std::fs::remove_file(f);
        }
    }

    /// `path` itself if it is a store, else the store a running mount at `path`
    /// recorded, else `path` (whose error then says it is not a store).
    pub fn resolve(path: &Path) -> PathBuf {
        if Store::at(path).config_file().exists() {
            return path.to_path_buf();
        }
        let recorded = mount_record(path).and_then(std::fs::read);
        match recorded {
            Ok(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
            Err(_) => path.to_path_buf(),
        }
    }

    /// The backing data directory: `STORE/data`, or the adopted folder it links to
    /// (`init --data`).
    pub fn data(&self) -> PathBuf {
        let link = self.dir.join("data");
        match std::fs::read_link(&link) {
            Ok(target) => target,
            Err(_) => link,
        }
    }
    /// The journal directory.
    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal")
    }
    /// The staging directory for incoming updates.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// Old bytes of regions overwritten since the last ack (rebuilt at each mount).
    pub fn preimages(&self) -> PathBuf {
        self.dir.join("preimages")
    }
    /// The archive of replaced and deleted versions.
    pub fn versions(&self) -> PathBuf {
        self.dir.join("versions")
    }
    /// The identity key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    /// The configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// The control socket of a running mount.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Creates a new store; `join` is a peer's folder id to share; `data` an existing
    /// folder to adopt in place (nothing is copied or moved; `STORE/data` links to it).
    pub fn init(
        dir: &Path,
        join: Option<&str>,
        data: Option<&Path>,
    ) -> Result<(Store, PeerId, Config), StoreError> {
        let data = match data {
            Some(d) => {
                let abs = std::fs::canonicalize(d).map_err(io("adopting", d))?;
                if !abs.is_dir() {
                    return Err(StoreError::Io {
                        what: "adopting (not a directory)",
                        path: abs,
                        source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
                Some(abs)
            }
            None => None,
        };
        let folder_id = match join {
            Some(id) => parse_folder_id(id)?,
            None => hex(&rand::random::<[u8; 16]>()),
        };
        if dir.join("config.toml").exists()
            || dir
                .read_dir()
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(StoreError::Exists(dir.to_path_buf()));
        }
        let store = Store::at(dir);
        std::fs::create_dir_all(&store.dir).map_err(io("creating", &store.dir))?;
        match &data {
            Some(target) => {
                let link = store.dir.join("data");
                std::os::unix::fs::symlink(target, &link).map_err(io("linking", &link))?;
            }
            None => std::fs::create_dir_all(store.data()).map_err(io("creating", &store.data()))?,
        }
        for d in [store.journal(), store.staging()] {
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        store.secure()?;
        let key = Keypair::generate_ed25519();
        write_new(
            &store.key_file(),
            &key.to_protobuf_encoding().expect("ed25519 encodes"),
            0o600,
        )?;
        let cfg = Config::new(folder_id);
        write_new(
            &store.config_file(),
            cfg.to_commented_toml().as_bytes(),
            0o600,
        )?;
        Ok((store, key.public().to_peer_id(), cfg))
    }

    /// Opens an existing store: checks it and reads its config.
    pub fn open(dir: &Path) -> Result<(Store, Config), StoreError> {
        let store = Store::at(dir);
        if !store.config_file().exists() {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        let cfg = Config::load(&store.config_file())?;
        parse_folder_id(&cfg.folder_id)?;
        Ok((store, cfg))
    }

    /// Closes the store to other users: the store directory and the daemon's own
    /// directories 0700, its files 0600 (stores made by older versions included). The
    /// data directory keeps its mode: it is the mount's root.
    pub fn secure(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, mode: u32| match std::fs::symlink_metadata(p) {
            Ok(md) if md.file_type().is_symlink() => Err(StoreError::Io {
                what: "refusing a symlink at",
                path: p.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ELOOP),
            }),
            Ok(_) => std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io("securing", p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("securing", p)(e)),
        };
        set(&self.dir, 0o700)?;
        for d in [self.journal(), self.staging(), self.preimages()] {
            set(&d, 0o700)?;
        }
        set(&self.key_file(), 0o600)?;
        set(&self.config_file(), 0o600)
    }

    /// Rewrites `config.toml` (with its comments) atomically.
    pub fn save_config(&self, cfg: &Config) -> Result<(), StoreError> {
        let tmp = self.dir.join("config.toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        write_new(&tmp, cfg.to_commented_toml().as_bytes(), 0o600)?;
        let path = self.config_file();
        std::fs::rename(&tmp, &path).map_err(io("replacing", &path))
    }

    /// The node's keypair.
    pub fn keypair(&self) -> Result<Keypair, StoreError> {
        let path = self.key_file();
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        Keypair::from_protobuf_encoding(&bytes).map_err(|_| StoreError::BadKey(path))
    }
}

/// Parses a folder id: 32 hex digits.
pub fn parse_folder_id(s: &str) -> Result<String, StoreError> {
    folder_id_bytes(s).map(|_| s.to_ascii_lowercase())
}

/// The 16 bytes of a folder id.
pub fn folder_id_bytes(s: &str) -> Result<[u8; 16], StoreError> {
    let bad = || StoreError::BadFolderId(s.to_string());
    if s.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Lower-case hex of `b` (file names made from hashes or random bytes).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io("writing", path))
}

/// Where the store mounted at `mountpoint` is recorded: `/run/syncfs/mounts/<BLAKE3 of
/// the canonical mount point>` (root-only writable, like /run).
fn mount_record(mountpoint: &Path) -> std::io::Result<PathBuf> {
    let canon = mountpoint.canonicalize()?;
    let h = blake3::hash(canon.as_os_str().as_encoded_bytes());
    Ok(PathBuf::from("/run/syncfs/mounts").join(&h.to_hex()[..32]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_layout_and_refuses_overwrite() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s");
        let (store, peer, cfg) = Store::init(&dir, None, None).unwrap();
        assert!(store.data().is_dir() && store.journal().is_dir());
        let mode = std::fs::metadata(store.key_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.keypair().unwrap().public().to_peer_id(), peer);
        assert_eq!(Store::open(&dir).unwrap().1, cfg);
        assert!(matches!(
            Store::init(&dir, None, None),
            Err(StoreError::Exists(_))
        ));
    }

    #[test]
    fn join_takes_the_folder_id() {
        let t = tempfile::tempdir().unwrap();
        let id = "00112233445566778899AABBCCDDEEFF";
        let (_, _, cfg) = Store::init(&t.path().join("s"), Some(id), None).unwrap();
        assert_eq!(cfg.folder_id, id.to_ascii_lowercase());
        assert!(Store::init(&t.path().join("t"), Some("xyz"), None).is_err());
    }
}
