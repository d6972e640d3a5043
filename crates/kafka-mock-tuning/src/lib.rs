//! Settings and request tracking of librdkafka's mock cluster that `rdkafka`
//! does not wrap. Its own crate, so that atelier's forbids unsafe code.

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

/// Kafka's API key of a fetch request.
pub const FETCH: i16 = 1;

/// Starts recording the requests the mock cluster receives (see
/// [`take_requests`]). Answers `false` when `client` is not a mock
/// cluster's client.
pub fn start_request_tracking<C: ClientContext>(client: &Client<C>) -> bool {
    // SAFETY: as in `set_group_initial_rebalance_delay`: a live handle, and
    // a call that only posts an operation to the cluster's thread.
    unsafe {
        let mock = rdkafka_sys::rd_kafka_handle_mock_cluster(client.native_ptr());
        if mock.is_null() {
            return false;
        }
        rdkafka_sys::rd_kafka_mock_start_request_tracking(mock);
    }
    true
}

/// How many requests with `api_key` the mock cluster received since
/// tracking started or since the last call, which forgets them. `None`
/// when `client` is not a mock cluster's client.
pub fn take_requests<C: ClientContext>(client: &Client<C>, api_key: i16) -> Option<usize> {
    // SAFETY: a live handle (as above). `rd_kafka_mock_get_requests`
    // answers a copy of the recorded requests, `cnt` of them, which this
    // function owns and frees with `rd_kafka_mock_request_destroy_array`
    // after reading each one's key; the array is only read below `cnt`.
    unsafe {
        let mock = rdkafka_sys::rd_kafka_handle_mock_cluster(client.native_ptr());
        if mock.is_null() {
            return None;
        }
        let mut cnt = 0usize;
        let reqs = rdkafka_sys::rd_kafka_mock_get_requests(mock, &mut cnt);
        let mut n = 0;
        if !reqs.is_null() {
            for i in 0..cnt {
                if rdkafka_sys::rd_kafka_mock_request_api_key(*reqs.add(i)) == api_key {
                    n += 1;
                }
            }
            rdkafka_sys::rd_kafka_mock_request_destroy_array(reqs, cnt);
        }
        rdkafka_sys::rd_kafka_mock_clear_requests(mock);
        Some(n)
    }
}
