//! Settings of librdkafka's mock cluster that `rdkafka` does not wrap. Its
//! own crate, so that atelier's forbids unsafe code.

use rdkafka::ClientContext;
use rdkafka::client::Client;

/// Sets how long the mock cluster's group coordinator waits before the
/// first rebalance of a new group (librdkafka's default is 3 s, as Kafka's
/// `group.initial.rebalance.delay.ms`). Answers `false` when `client` is
/// not a mock cluster's client (created with `test.mock.num.brokers`).
pub fn set_group_initial_rebalance_delay<C: ClientContext>(client: &Client<C>, ms: i32) -> bool {
    // SAFETY: `native_ptr` is the live handle `client` owns; the mock
    // cluster it returns (or null) lives as long as that handle, and the
    // call only posts an operation to the cluster's own thread.
    unsafe {
        let mock = rdkafka_sys::rd_kafka_handle_mock_cluster(client.native_ptr());
        if mock.is_null() {
            return false;
        }
        rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mock, ms);
    }
    true
}
