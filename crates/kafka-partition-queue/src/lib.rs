//! Detaches a partition's fetch queue from a consumer's main queue, from
//! inside the rebalance callback, before the partition is assigned, and
//! takes the records ready on it in one call ([`ReadyQueue`]). Its own
//! crate, so that atelier's forbids unsafe code.
//!
//! `rdkafka`'s `split_partition_queue` needs the consumer in an `Arc`, which
//! the rebalance callback does not have; called after the assignment, it
//! races the first fetch (records fetched before it stay on the main
//! queue). librdkafka keeps a fetch queue that the application forwarded
//! (even to nothing) as it is when the partition's fetch starts, so
//! detaching it here, before `assign`, sends every record of the partition
//! to its own queue, which `split_partition_queue` then opens.

use std::ffi::CString;

use rdkafka::ClientContext;
use rdkafka::client::Client;

/// Stops forwarding `topic`/`partition`'s fetched records to the consumer's
/// main queue. Answers `false` when librdkafka knows no such partition or
/// the topic name holds a NUL.
pub fn detach_partition<C: ClientContext>(client: &Client<C>, topic: &str, partition: i32) -> bool {
    let Ok(topic) = CString::new(topic) else {
        return false;
    };
    // SAFETY: `native_ptr` is the live handle `client` owns, and `topic` a
    // NUL-terminated string that outlives the call. The queue handle
    // `rd_kafka_queue_get_partition` answers (or null) is this function's
    // own reference: forwarded to nothing, then released; the partition's
    // fetch queue itself lives on in librdkafka.
    unsafe {
        let q = rdkafka_sys::rd_kafka_queue_get_partition(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
        );
        if q.is_null() {
            return false;
        }
        rdkafka_sys::rd_kafka_queue_forward(q, std::ptr::null_mut());
        rdkafka_sys::rd_kafka_queue_destroy(q);
    }
    true
}

/// A partition's queue, opened by a reference of its own, from which the
/// records that are ready are taken in one call
/// (`rd_kafka_consume_batch_queue`), without `rdkafka`'s per-message poll
/// and event wrapper. Waiting for the first record stays with `rdkafka`'s
/// stream on the same queue. Drop it before its client: the caller keeps
/// the client alive meanwhile.
#[derive(Debug)]
pub struct ReadyQueue {
    q: std::ptr::NonNull<rdkafka_sys::rd_kafka_queue_t>,
    /// The pointers one call answers, kept between calls (empty there).
    taken: Vec<*mut rdkafka_sys::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queue operations lock the queue; a handle may be used
// from any thread.
unsafe impl Send for ReadyQueue {}
// SAFETY: as above; `take_ready` takes `&mut self`, and `taken` is empty
// between calls (no message is held across them).
unsafe impl Sync for ReadyQueue {}

impl Drop for ReadyQueue {
    fn drop(&mut self) {
        // SAFETY: the reference `open` took, released once.
        unsafe { rdkafka_sys::rd_kafka_queue_destroy(self.q.as_ptr()) }
    }
}

/// One record taken from a [`ReadyQueue`], borrowed for the callback.
#[derive(Debug)]
pub struct Taken<'a> {
    m: &'a rdkafka_sys::rd_kafka_message_t,
}

impl<'a> Taken<'a> {
    /// The consumer error this record reports instead of data: librdkafka's
    /// error code and its text.
    pub fn error(&self) -> Option<(rdkafka_sys::rd_kafka_resp_err_t, String)> {
        if self.m.err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: librdkafka answers a static NUL-terminated string for any
        // code.
        let text = unsafe { std::ffi::CStr::from_ptr(rdkafka_sys::rd_kafka_err2str(self.m.err)) };
        Some((self.m.err, text.to_string_lossy().into_owned()))
    }

    /// Its offset.
    pub fn offset(&self) -> i64 {
        self.m.offset
    }

    /// Its key.
    pub fn key(&self) -> Option<&'a [u8]> {
        bytes(self.m.key, self.m.key_len)
    }

    /// Its value.
    pub fn payload(&self) -> Option<&'a [u8]> {
        bytes(self.m.payload, self.m.len)
    }

    /// Its headers in order: name (empty when not UTF-8) and value (empty
    /// when null).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let mut hdrs: *mut rdkafka_sys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: the message is alive for 'a; librdkafka parses its headers
        // once and keeps them with the message.
        let found = unsafe { rdkafka_sys::rd_kafka_message_headers(self.m, &mut hdrs) };
        let hdrs = (found == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then_some(hdrs as *const rdkafka_sys::rd_kafka_headers_t)
            .filter(|h| !h.is_null());
        let mut idx = 0usize;
        std::iter::from_fn(move || {
            let hdrs = hdrs?;
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: `hdrs` belongs to the message, alive for 'a; the
            // pointers answered point into it.
            let got = unsafe {
                rdkafka_sys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size)
            };
            if got != rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null()
            {
                return None;
            }
            idx += 1;
            // SAFETY: a header name is NUL-terminated and lives with the
            // message.
            let name = unsafe { std::ffi::CStr::from_ptr(name) }
                .to_str()
                .unwrap_or_default();
            Some((name, bytes(value.cast_mut(), size).unwrap_or_default()))
        })
    }
}

fn bytes<'a>(p: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka's pointer and length describe one buffer owned by
    // the message, which outlives 'a (the callback's borrow).
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

impl ReadyQueue {
    /// `topic`/`partition`'s fetch queue (see [`detach_partition`]); `None`
    /// when librdkafka knows no such partition.
    pub fn open<C: ClientContext>(client: &Client<C>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: as in `detach_partition`; the reference answered is owned
        // by the `ReadyQueue` and released on drop.
        let q = unsafe {
            rdkafka_sys::rd_kafka_queue_get_partition(
                client.native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        std::ptr::NonNull::new(q).map(|q| Self {
            q,
            taken: Vec::new(),
        })
    }

    /// Takes up to `max` records that are ready, without waiting, in one
    /// call; `each` sees them in order, and each is released after it.
    /// Answers how many were taken.
    pub fn take_ready(&mut self, max: usize, mut each: impl FnMut(Taken<'_>)) -> usize {
        if max == 0 {
            return 0;
        }
        let taken = &mut self.taken;
        taken.clear();
        taken.reserve(max);
        // SAFETY: `taken` has room for `max` pointers; librdkafka writes at
        // most that many and answers how many (or -1).
        let n = unsafe {
            rdkafka_sys::rd_kafka_consume_batch_queue(self.q.as_ptr(), 0, taken.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: librdkafka initialized the first `n` entries.
        unsafe { taken.set_len(n) };
        // Each message is released once, even if `each` panics; `taken` is
        // left empty either way.
        struct Release<'v>(&'v mut Vec<*mut rdkafka_sys::rd_kafka_message_t>, usize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                for &m in &self.0[self.1..] {
                    // SAFETY: a message librdkafka handed out, released once.
                    unsafe { rdkafka_sys::rd_kafka_message_destroy(m) };
                }
                self.0.clear();
            }
        }
        let mut release = Release(taken, 0);
        while release.1 < release.0.len() {
            let m = release.0[release.1];
            // SAFETY: a live message; the borrow ends before it is released.
            each(Taken { m: unsafe { &*m } });
            release.1 += 1;
            // SAFETY: as above, released once (`Release` skips it now).
            unsafe { rdkafka_sys::rd_kafka_message_destroy(m) };
        }
        n
    }
}
