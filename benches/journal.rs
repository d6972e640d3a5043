//! The embedded log's journal: what an append costs with each sync policy,
//! alone and with 64 appenders sharing groups (group commit).
//! `cargo bench --bench journal`; each figure is the time per append.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atelier::bus::journal::{Entry, Fsync, Journal, JournalOptions, JournalRecord};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One vote's record (about the size the log holds).
fn entry(i: u64) -> Entry {
    Entry::Records {
        topic: "bench.atelier.polls.v1".into(),
        partition: (i % 12) as i32,
        records: vec![JournalRecord {
            offset: i as i64,
            timestamp_ms: 1_700_000_000_000,
            key: Some(b"01890a5d-ac96-774b-bcce-b302099a8057".to_vec()),
            headers: vec![
                ("ce_type".into(), Some(b"atelier.vote.cast.v1".to_vec())),
                (
                    "ce_id".into(),
                    Some(b"01890a5d-ac96-774b-bcce-b302099a8058".to_vec()),
                ),
            ],
            payload: Some(vec![b'x'; 180]),
        }],
    }
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("journal_append");
    g.throughput(Throughput::Elements(1));
    for (name, fsync) in [
        ("fsync_always", Fsync::Always),
        (
            "fsync_every_100ms",
            Fsync::Every(Duration::from_millis(100)),
        ),
    ] {
        for appenders in [1u64, 64] {
            let dir = tempfile::tempdir().unwrap();
            let j = Arc::new(
                Journal::open(
                    dir.path(),
                    JournalOptions {
                        fsync,
                        ..JournalOptions::default()
                    },
                    |_, _| Ok(()),
                )
                .unwrap(),
            );
            g.bench_function(format!("{name}/{appenders}_appenders"), |b| {
                b.iter_custom(|iters| {
                    let j = j.clone();
                    rt.block_on(async move {
                        let start = Instant::now();
                        let per = iters.div_ceil(appenders);
                        let tasks: Vec<_> = (0..appenders)
                            .map(|a| {
                                let j = j.clone();
                                tokio::spawn(async move {
                                    for i in 0..per {
                                        j.append(entry(a * per + i)).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * appenders) as f64)
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).sample_size(10);
    targets = appends
}
criterion_main!(benches);
