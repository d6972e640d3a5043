//! Ids and clocks minted at the edge: the ingest API, the inference worker
//! and the tools stamp events with these; the pure core (`event`, `fold`)
//! never reads a clock or draws an id, so replays decide alike.

/// Now, at the precision events carry (microseconds, as on the wire and in
/// the views), so that an event compares equal after a round trip.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A fresh, time-ordered id (UUID v7) for a new event or aggregate.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
