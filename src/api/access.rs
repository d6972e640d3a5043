//! Who may see a session, an upload and its images.
//!
//! **Sessions are minted, and their keys name their owner.** `POST
//! /v1/sessions` answers a key `s.<nonce>.<tag>`, where the tag is an HMAC
//! (`auth.link_key`) of the nonce and the caller's user id. Whether a caller
//! owns a key is then a computation, not a lookup: every API process agrees
//! at once, the first upload cannot race another user's for the key, an
//! upload is checked without a read, and the key tells nobody else who owns
//! it. Only the owner uploads into a session (403 otherwise); only the
//! owner and administrators read its cards, its uploads and their status
//! (404 for everyone else, so keys and upload ids leak nothing).
//!
//! **Links are signed and expire.** An image is served to whoever holds a
//! link signed over its upload id, variant and expiry (`Cache-Control:
//! private`); a session is shown to whoever holds a link signed over its key
//! and expiry (the owner shares one, the dashboard follows one). Expiries lie
//! on a grid of `auth.link_ttl_secs`, so a card read twice in one period
//! carries the same links (its ETag and the browser's image cache hold) and
//! a link lives between one and two periods.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::event::{SessionKey, UploadId, UserId};

/// Bytes of randomness in a session key, and of each signature.
const NONCE: usize = 16;
const TAG: usize = 16;

/// The prefix of minted session keys.
const PREFIX: &str = "s.";

/// Signs and checks session keys and links.
#[derive(Clone)]
pub struct Links {
    key: Vec<u8>,
    ttl: u64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("ttl", &self.ttl).finish()
    }
}

/// A signed grant: its expiry (seconds since the epoch) and signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// When it stops working.
    pub exp: u64,
    /// The signature (base64url).
    pub sig: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Links {
    /// Links signed with `key`, living about `ttl_secs`.
    pub fn new(key: &[u8], ttl_secs: u64) -> Self {
        Self {
            key: key.to_vec(),
            ttl: ttl_secs.max(1),
        }
    }

    /// The HMAC of length-prefixed parts under a purpose.
    fn hmac(&self, purpose: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        for p in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// [`Links::hmac`] truncated to [`TAG`] bytes.
    fn mac(&self, purpose: &str, parts: &[&[u8]]) -> [u8; TAG] {
        let full = self.hmac(purpose, parts).finalize().into_bytes();
        let mut out = [0u8; TAG];
        out.copy_from_slice(&full[..TAG]);
        out
    }

    fn verify(&self, purpose: &str, parts: &[&[u8]], sig: &str) -> bool {
        let Ok(given) = B64.decode(sig) else {
            return false;
        };
        // Constant time: a signature cannot be guessed byte by byte.
        given.len() == TAG
            && self
                .hmac(purpose, parts)
                .verify_truncated_left(&given)
                .is_ok()
    }

    /// A new session key owned by `owner`. Its nonce is a UUID v7 (74
    /// random bits after the time): unique, and it says when it was minted
    /// ([`SessionKey::minted_ms`]), which orders an owner's sessions newest
    /// first. The tag, not the nonce, is what cannot be forged.
    pub fn mint_session(&self, owner: &UserId) -> SessionKey {
        let nonce: [u8; NONCE] = *uuid::Uuid::now_v7().as_bytes();
        let nonce = B64.encode(nonce);
        let tag = B64.encode(self.mac("session", &[nonce.as_bytes(), owner.as_str().as_bytes()]));
        SessionKey::parse(&format!("{PREFIX}{nonce}.{tag}")).expect("a minted key is valid")
    }

    /// Whether `owner` owns `key` (false for keys that were not minted).
    pub fn owns(&self, owner: &UserId, key: &SessionKey) -> bool {
        let Some((nonce, tag)) = key
            .as_str()
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('.'))
        else {
            return false;
        };
        self.verify(
            "session",
            &[nonce.as_bytes(), owner.as_str().as_bytes()],
            tag,
        )
    }

    /// The expiry of links issued now.
    fn expiry(&self) -> u64 {
        (now_secs() / self.ttl + 2) * self.ttl
    }

    /// A link to read (and follow) `key`'s cards, for anyone holding it.
    pub fn share(&self, key: &SessionKey, exp: Option<u64>) -> Grant {
        let exp = exp.unwrap_or_else(|| self.expiry());
        let sig = B64.encode(self.mac("share", &[key.as_str().as_bytes(), &exp.to_be_bytes()]));
        Grant { exp, sig }
    }

    /// Whether `g` grants reading `key` now.
    pub fn shared(&self, key: &SessionKey, g: &Grant) -> bool {
        g.exp >= now_secs()
            && self.verify(
                "share",
                &[key.as_str().as_bytes(), &g.exp.to_be_bytes()],
                &g.sig,
            )
    }

    fn image_grant(&self, id: UploadId, variant: &str, exp: u64) -> Grant {
        let id = id.to_string();
        let sig = B64.encode(self.mac(
            "image",
            &[id.as_bytes(), variant.as_bytes(), &exp.to_be_bytes()],
        ));
        Grant { exp, sig }
    }

    /// A signed, expiring URL of an upload's image (`input` or `output`).
    pub fn image_url(&self, id: UploadId, variant: &str) -> String {
        let g = self.image_grant(id, variant, self.expiry());
        format!(
            "/v1/uploads/{id}/image?variant={variant}&exp={}&sig={}",
            g.exp, g.sig
        )
    }

    /// Whether `g` grants reading an upload's image now; the seconds it has
    /// left when it does.
    pub fn image_allowed(&self, id: UploadId, variant: &str, g: &Grant) -> Option<u64> {
        let now = now_secs();
        let id_text = id.to_string();
        (g.exp >= now
            && self.verify(
                "image",
                &[id_text.as_bytes(), variant.as_bytes(), &g.exp.to_be_bytes()],
                &g.sig,
            ))
        .then(|| g.exp - now)
    }
}

/// A session key owned by `owner` under `link_key`, as `POST /v1/sessions`
/// mints it (for tools and tests that write events directly).
pub fn session_key_for(link_key: &str, owner: &str) -> String {
    let owner = UserId::parse(owner).expect("a valid user id");
    Links::new(link_key.as_bytes(), 3600)
        .mint_session(&owner)
        .as_str()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_minted_key_is_its_owners_only() {
        let l = Links::new(b"k", 60);
        let key = l.mint_session(&user("alice"));
        assert!(key.as_str().len() <= crate::event::ID_MAX, "{key:?}");
        assert!(l.owns(&user("alice"), &key));
        assert!(!l.owns(&user("bob"), &key));
        // Another link key, or a key nobody minted, is nobody's.
        assert!(!Links::new(b"other", 60).owns(&user("alice"), &key));
        assert!(!l.owns(&user("alice"), &SessionKey::parse("demo").unwrap()));
        // One character of the tag changed (not its last, whose spare bits
        // a lenient decoder may ignore; a tag may already end in `A`).
        let mut forged = key.as_str().to_owned();
        let at = forged.len() - 3;
        let swap = if &forged[at..at + 1] == "A" { "B" } else { "A" };
        forged.replace_range(at..at + 1, swap);
        assert_ne!(forged, key.as_str());
        assert!(!l.owns(&user("alice"), &SessionKey::parse(&forged).unwrap()));
        assert_ne!(key, l.mint_session(&user("alice")), "keys are random");
    }

    #[test]
    fn a_minted_key_says_when_it_was_minted() {
        let l = Links::new(b"k", 60);
        let before = now_secs() as i64 * 1000;
        let key = l.mint_session(&user("alice"));
        let after = (now_secs() as i64 + 1) * 1000;
        assert!(
            (before..=after).contains(&key.minted_ms()),
            "{} not in {before}..={after}",
            key.minted_ms()
        );
        for legacy in ["demo", "s.AAAA.BBBB", "s.not_b64.x"] {
            let k = SessionKey::parse(legacy).unwrap();
            assert_eq!(k.minted_ms(), 0, "{legacy}");
        }
        // A random (v4) nonce carries no time.
        let v4 = format!("s.{}.x", B64.encode(uuid::Uuid::new_v4().as_bytes()));
        assert_eq!(SessionKey::parse(&v4).unwrap().minted_ms(), 0);
    }

    #[test]
    fn links_are_bound_to_what_they_name_and_expire() {
        let l = Links::new(b"k", 60);
        let key = l.mint_session(&user("alice"));
        let other = l.mint_session(&user("alice"));
        let g = l.share(&key, None);
        assert!(l.shared(&key, &g));
        assert!(!l.shared(&other, &g));
        let past = l.share(&key, Some(now_secs() - 1));
        assert!(!l.shared(&key, &past), "expired");
        let stretched = Grant {
            exp: g.exp + 60,
            sig: g.sig.clone(),
        };
        assert!(!l.shared(&key, &stretched), "expiry is signed");

        let id = UploadId(uuid::Uuid::now_v7());
        let g = l.image_grant(id, "input", l.expiry());
        assert!(l.image_allowed(id, "input", &g).is_some());
        assert!(
            l.image_allowed(id, "output", &g).is_none(),
            "variant is signed"
        );
        let other_id = UploadId(uuid::Uuid::now_v7());
        assert!(l.image_allowed(other_id, "input", &g).is_none());
        let url = l.image_url(id, "output");
        assert!(url.contains("variant=output&exp="), "{url}");
        // Issued on a grid: the same link within a period.
        assert_eq!(url, l.image_url(id, "output"));
    }
}
