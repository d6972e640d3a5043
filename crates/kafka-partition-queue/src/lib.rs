//! Detaches a partition's fetch queue from a consumer's main queue, from
//! inside the rebalance callback, before the partition is assigned. Its own
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
