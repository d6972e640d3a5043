//! The worker's name, which is its transactional id: unique per replica
//! without hand configuration.
//!
//! Left empty, `infer.instance` becomes `{hostname}-{slot}`, where the slot
//! is the lowest one whose lease file this worker can lock on this host
//! (`{tmp}/atelier-leases/`). The lock dies with the process, SIGKILL
//! included, so a restarted worker takes the lowest free slot: usually its
//! predecessor's, whose open transaction it then aborts at once (instead of
//! after the transaction timeout). Containers get distinct host names.
//!
//! A configured name is leased the same way: a second worker on this host
//! with the same name is refused at start. Across hosts a duplicate shows
//! up as fencing: the committer reports "fenced" with the id and stops, and
//! `atelier_infer_fenced_total` counts it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use super::InferError;

/// Slots tried before giving up (a host with more workers than this is
/// misconfigured).
const SLOTS: u32 = 256;

/// A held name; the lease lasts as long as this value.
#[derive(Debug)]
pub(super) struct Lease {
    /// The worker's name.
    pub(super) name: String,
    _file: File,
}

fn dir() -> PathBuf {
    std::env::temp_dir().join("atelier-leases")
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Locks `{group}.{name}.lock`; `Ok(None)` when another process holds it.
fn try_lease(group: &str, name: &str) -> Result<Option<Lease>, InferError> {
    let path = dir().join(format!("{}.{}.lock", safe(group), safe(name)));
    let lease_err = |e: std::io::Error| InferError::Lease(format!("{}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lease_err)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(lease_err)?;
            file.rewind().map_err(lease_err)?;
            writeln!(file, "{}", std::process::id()).map_err(lease_err)?;
            Ok(Some(Lease {
                name: name.to_owned(),
                _file: file,
            }))
        }
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(lease_err(e)),
    }
}

/// The holder's pid, as it wrote it.
fn holder(group: &str, name: &str) -> String {
    let path = dir().join(format!("{}.{}.lock", safe(group), safe(name)));
    let mut s = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s.trim().to_owned()
}

/// Leases this worker's name in consumer group `group`: `configured`, or
/// the host name plus the lowest free slot.
pub(super) fn acquire(group: &str, configured: &str) -> Result<Lease, InferError> {
    std::fs::create_dir_all(dir())
        .map_err(|e| InferError::Lease(format!("{}: {e}", dir().display())))?;
    if !configured.is_empty() {
        return try_lease(group, configured)?.ok_or_else(|| {
            InferError::Lease(format!(
                "infer.instance `{configured}` is already used by another worker on this host \
                 (pid {}); give each worker its own name, or leave it empty for a leased one",
                holder(group, configured)
            ))
        });
    }
    let host = hostname();
    for slot in 0..SLOTS {
        if let Some(l) = try_lease(group, &format!("{host}-{slot}"))? {
            return Ok(l);
        }
    }
    Err(InferError::Lease(format!(
        "all {SLOTS} worker slots of host {host} are held"
    )))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_on_one_host_get_distinct_names_and_a_freed_slot_is_reused() {
        let group = format!("lease-test-{}", uuid::Uuid::new_v4());
        let a = acquire(&group, "").unwrap();
        let b = acquire(&group, "").unwrap();
        assert_ne!(a.name, b.name);
        assert!(a.name.ends_with("-0"), "{}", a.name);
        assert!(b.name.ends_with("-1"), "{}", b.name);
        drop(a);
        let c = acquire(&group, "").unwrap();
        assert!(c.name.ends_with("-0"), "the freed slot: {}", c.name);
    }

    #[test]
    fn a_configured_name_in_use_is_refused_with_its_holder() {
        let group = format!("lease-test-{}", uuid::Uuid::new_v4());
        let _a = acquire(&group, "infer-1").unwrap();
        let e = acquire(&group, "infer-1").unwrap_err().to_string();
        assert!(e.contains("already used by another worker"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        let other = acquire(&group, "infer-2").unwrap();
        assert_eq!(other.name, "infer-2");
    }
}
