//! Encryption at rest: AES-256-GCM over message records and the definitions, with keys
//! read from key files.
//!
//! Every sealed piece of data names the key that sealed it by a 4-byte key id (the first
//! bytes of a SHA-256 of the key), so a broker given a new key and its old ones (key
//! rotation) writes with the new key and still reads what the old ones sealed. A record's
//! CRC (see [`super::record`]) covers the ciphertext: a torn or flipped record is found as
//! before, without a key; a record whose CRC is intact but whose GCM tag does not verify was
//! sealed with another key of the same id or tampered with, and is an error, never garbage.
//!
//! Nonces are 96 bits: each writer (a queue log, the definitions journal) starts at a random
//! 96-bit value and counts up from it. Two writers repeat a nonce only if their ranges
//! overlap in a 2^96 space, which for any realistic number of records is far less likely
//! than with a fresh random nonce per record, and costs no syscall per record.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const KEY_ID_LEN: usize = 4;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed piece adds to its plaintext: key id, nonce and tag.
pub const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;
/// Starts a sealed blob (a snapshot file, a journal record): never the first byte of JSON.
pub const BLOB_MAGIC: &[u8; 4] = b"HENC";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read encryption key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "encryption key file {path} must hold a 256-bit key: 32 bytes, or 64 hexadecimal digits \
         (make one with: openssl rand -hex 32)"
    )]
    Format { path: PathBuf },
    #[error("encryption key files {first} and {second} hold keys with the same id {id}")]
    SameId { first: PathBuf, second: PathBuf, id: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CipherError {
    #[error("sealed with key {0}, which is not among the configured encryption keys")]
    UnknownKey(String),
    #[error("sealed with key {0}, but the configured key of that id does not open it (another key, or tampered data)")]
    BadTag(String),
    #[error("encrypted, but no encryption key is configured")]
    NoKey,
    #[error("too short to be sealed data")]
    Short,
}

/// A key id as operators see it in messages: 8 hex digits.
pub fn show_id(id: u32) -> String {
    format!("{id:08x}")
}

struct Key {
    id: u32,
    path: PathBuf,
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "Key({}, {})", show_id(self.id), self.path.display())
    }
}

/// The keys a broker seals and opens with: the current one (all writes) first, then the
/// previous ones (reads only, until nothing sealed with them remains).
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

fn key_id(key: &[u8; 32]) -> u32 {
    let digest = Sha256::new().chain_update(b"hare encryption key id\0").chain_update(key).finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn parse_key(data: &[u8]) -> Option<[u8; 32]> {
    if data.len() == 32 {
        return data.try_into().ok();
    }
    let text = std::str::from_utf8(data).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl KeyRing {
    /// Reads the current key file and any previous ones.
    pub fn load(current: &Path, previous: &[PathBuf]) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for path in std::iter::once(current).chain(previous.iter().map(PathBuf::as_path)) {
            let data = std::fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
            let key = parse_key(&data).ok_or_else(|| KeyError::Format { path: path.into() })?;
            let id = key_id(&key);
            if let Some(same) = keys.iter().find(|k| k.id == id) {
                return Err(KeyError::SameId { first: same.path.clone(), second: path.into(), id: show_id(id) });
            }
            keys.push(Key { id, path: path.into(), aead: Aes256Gcm::new(&key.into()) });
        }
        Ok(KeyRing { keys })
    }

    /// A ring of one key, for tests.
    pub fn from_key(key: [u8; 32]) -> KeyRing {
        KeyRing {
            keys: vec![Key { id: key_id(&key), path: PathBuf::from("(memory)"), aead: Aes256Gcm::new(&key.into()) }],
        }
    }

    /// The id of the key new data is sealed with.
    pub fn current_id(&self) -> u32 {
        self.keys[0].id
    }

    /// The file of the current key, for messages.
    pub fn current_path(&self) -> &Path {
        &self.keys[0].path
    }

    pub fn has(&self, id: u32) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// Encrypts `buf` in place with the current key; returns the tag to store after it.
    /// `aad` is authenticated but stays in the clear (a record's kind and sequence number).
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self.keys[0]
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .expect("AES-GCM seals any buffer below 64 GiB");
        tag.into()
    }

    /// Decrypts `buf` in place with key `id`, checking the tag.
    pub fn open_in_place(
        &self,
        id: u32,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CipherError> {
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| CipherError::UnknownKey(show_id(id)))?;
        if nonce.len() != NONCE_LEN || tag.len() != TAG_LEN {
            return Err(CipherError::Short);
        }
        key.aead
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
            .map_err(|_| CipherError::BadTag(show_id(id)))
    }

    /// Seals a whole blob: `HENC | key id | nonce | ciphertext | tag`.
    pub fn seal(&self, nonces: &mut Nonces, plaintext: &[u8]) -> Vec<u8> {
        let nonce = nonces.take();
        let mut out = Vec::with_capacity(BLOB_MAGIC.len() + OVERHEAD + plaintext.len());
        out.extend_from_slice(BLOB_MAGIC);
        out.extend_from_slice(&self.current_id().to_be_bytes());
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(&nonce, BLOB_MAGIC, &mut out[start..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a blob made by [`KeyRing::seal`].
    pub fn open(&self, blob: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut b = split_blob(blob)?;
        self.open_in_place(b.id, b.nonce, BLOB_MAGIC, &mut b.body, b.tag)?;
        Ok(b.body)
    }
}

/// The parts of a sealed blob.
struct Blob<'a> {
    id: u32,
    nonce: &'a [u8],
    body: Vec<u8>,
    tag: &'a [u8],
}

fn split_blob(blob: &[u8]) -> Result<Blob<'_>, CipherError> {
    if blob.len() < BLOB_MAGIC.len() + OVERHEAD || !is_sealed_blob(blob) {
        return Err(CipherError::Short);
    }
    let rest = &blob[BLOB_MAGIC.len()..];
    Ok(Blob {
        id: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
        nonce: &rest[KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN],
        body: rest[KEY_ID_LEN + NONCE_LEN..rest.len() - TAG_LEN].to_vec(),
        tag: &rest[rest.len() - TAG_LEN..],
    })
}

/// Whether a blob was sealed (else it is plain JSON written before encryption was on).
pub fn is_sealed_blob(blob: &[u8]) -> bool {
    blob.starts_with(BLOB_MAGIC)
}

/// The key id a sealed blob names.
pub fn blob_key(blob: &[u8]) -> Option<u32> {
    split_blob(blob).ok().map(|b| b.id)
}

/// Opens `blob` if it is sealed (needing a key), else returns it as it is.
pub fn open_maybe(keys: Option<&KeyRing>, blob: &[u8]) -> Result<Vec<u8>, CipherError> {
    if !is_sealed_blob(blob) {
        return Ok(blob.to_vec());
    }
    keys.ok_or(CipherError::NoKey)?.open(blob)
}

/// One writer's nonces: a random 96-bit start, counting up.
#[derive(Debug)]
pub struct Nonces {
    high: u32,
    low: u64,
}

impl Default for Nonces {
    fn default() -> Self {
        Self::new()
    }
}

impl Nonces {
    pub fn new() -> Nonces {
        let mut rng = rand::thread_rng();
        Nonces { high: rng.next_u32(), low: rng.next_u64() }
    }

    pub fn take(&mut self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.high.to_be_bytes());
        n[4..].copy_from_slice(&self.low.to_be_bytes());
        self.low = self.low.wrapping_add(1);
        if self.low == 0 {
            self.high = self.high.wrapping_add(1);
        }
        n
    }
}

/// The data directory's record of its encryption, `encryption.json`: which key sealed it
/// and a sealed check value, so a wrong key is refused at start even with every queue
/// empty, and a directory that was encrypted is never opened without a key.
pub const MARKER_FILE: &str = "encryption.json";
const CHECK_TEXT: &[u8] = b"hare encryption check";

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    key_id: String,
    /// [`CHECK_TEXT`] sealed with that key, in hex.
    check: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("the data directory {dir} is encrypted (key {key}): set encryption_key_file to its key file")]
    NoKey { dir: PathBuf, key: String },
    #[error(
        "the key in {path} (key {have}) is not the key the data directory {dir} is encrypted with (key {want}); \
         to rotate keys, list the old key file in encryption_previous_key_files"
    )]
    WrongKey { dir: PathBuf, path: PathBuf, have: String, want: String },
    #[error("the encryption key of {dir} (key {key}) does not open its check value: the key file holds another key")]
    BadCheck { dir: PathBuf, key: String },
    #[error("cannot read or write {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Checks the data directory's marker against the configured keys at start, and writes it
/// anew when encryption is turned on or the current key changed (rotation).
pub fn check_marker(dir: &Path, keys: Option<&KeyRing>) -> Result<(), MarkerError> {
    let path = dir.join(MARKER_FILE);
    let file_err = |reason: String| MarkerError::File { path: path.clone(), reason };
    let marker: Option<Marker> = match std::fs::read(&path) {
        Ok(data) => Some(serde_json::from_slice(&data).map_err(|e| file_err(e.to_string()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(file_err(e.to_string())),
    };
    let Some(keys) = keys else {
        return match marker {
            Some(m) => Err(MarkerError::NoKey { dir: dir.into(), key: m.key_id }),
            None => Ok(()),
        };
    };
    if let Some(m) = &marker {
        let id = u32::from_str_radix(&m.key_id, 16).map_err(|e| file_err(e.to_string()))?;
        if !keys.has(id) {
            return Err(MarkerError::WrongKey {
                dir: dir.into(),
                path: keys.current_path().into(),
                have: show_id(keys.current_id()),
                want: m.key_id.clone(),
            });
        }
        let check = unhex(&m.check).ok_or_else(|| file_err("check is not hex".into()))?;
        match keys.open(&check) {
            Ok(text) if text == CHECK_TEXT => {}
            _ => return Err(MarkerError::BadCheck { dir: dir.into(), key: m.key_id.clone() }),
        }
        if id == keys.current_id() {
            return Ok(());
        }
        tracing::info!(
            "encryption key rotated from {} to {}: new data is sealed with the new key; keep the old key file \
             listed until the data it sealed is consumed",
            m.key_id,
            show_id(keys.current_id())
        );
    } else {
        tracing::info!("encryption at rest turned on with key {}", show_id(keys.current_id()));
    }
    let marker = Marker { key_id: show_id(keys.current_id()), check: hex(&keys.seal(&mut Nonces::new(), CHECK_TEXT)) };
    let json = serde_json::to_vec_pretty(&marker).map_err(|e| file_err(e.to_string()))?;
    super::write_atomically(&path, &json).map_err(|e| file_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_tamper() {
        let keys = KeyRing::from_key([7; 32]);
        let mut nonces = Nonces::new();
        let blob = keys.seal(&mut nonces, b"{\"secret\":1}");
        assert!(is_sealed_blob(&blob));
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(keys.open(&blob).unwrap(), b"{\"secret\":1}");
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(keys.open(&bad), Err(CipherError::BadTag(show_id(keys.current_id()))));
        let other = KeyRing::from_key([8; 32]);
        assert!(matches!(other.open(&blob), Err(CipherError::UnknownKey(_))));
        assert_eq!(open_maybe(None, &blob), Err(CipherError::NoKey));
        assert_eq!(open_maybe(None, b"{}").unwrap(), b"{}");
    }

    #[test]
    fn nonces_do_not_repeat_across_the_low_word() {
        let mut n = Nonces { high: 5, low: u64::MAX - 1 };
        let a = n.take();
        let b = n.take();
        let c = n.take();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(&c[..4], &6u32.to_be_bytes());
    }

    #[test]
    fn key_files_hex_or_raw() {
        assert_eq!(parse_key(&[1; 32]), Some([1; 32]));
        let hex_key = format!("{}\n", "ab".repeat(32));
        assert_eq!(parse_key(hex_key.as_bytes()), Some([0xab; 32]));
        assert_eq!(parse_key(b"short"), None);
        assert_eq!(parse_key("zz".repeat(32).as_bytes()), None);
    }
}
