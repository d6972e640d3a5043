//! `atelier bench infer`: images/s and latency of the TorchScript models on
//! this machine, against the same model run from Python in-process (same
//! threads) and against one Python process per image, as the monolith ran
//! them; a batch-size sweep; and (`--memory`) resident memory with 1 and 8
//! uploads in flight.
//!
//! Rows:
//! - `rust forward`: the engine alone (tch), `batch` images per call.
//! - `python forward`: `models/bench_python.py --mode forward`, same model,
//!   threads, batch and pixels (uint8 in and out, as the engine's call).
//! - `rust pipeline`: the whole worker on the embedded log and blob store:
//!   JPEGs appended as uploads, timed until their cards say `completed`
//!   (throughput with all images queued; latency with one in flight).
//! - `python pipeline`: decode, forward, encode in one Python process.
//! - `python subprocess`: `models/run_one.py` per image (imports torch and
//!   loads the model every time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};

use crate::app::{App, Roles};
use crate::cli::latency::Latencies;
use crate::config::Config;
use crate::event::{Event, EventData, EventId, SessionKey, Style, UploadId, UploadReceived};
use crate::fold::cards::Status;
use crate::image::codec;
use crate::infer::model::{self, Pixels};
use crate::infer::{publish, registry};

#[derive(Debug, Args)]
pub(crate) struct InferArgs {
    /// Directory with the exported models (`scripts/export-models` prints it).
    #[arg(long, env = "ATELIER_BENCH_MODELS")]
    models_dir: PathBuf,
    /// The model (`{model}.pt` in the directory).
    #[arg(long, default_value = "transformer")]
    model: String,
    /// Square image sides.
    #[arg(long, value_delimiter = ',', default_values_t = [256u32, 1024])]
    sizes: Vec<u32>,
    /// Batch sizes of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    batches: Vec<usize>,
    /// Model threads, for Rust and Python alike (0: every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Images per measurement at 256×256 (fewer at larger sizes, by area;
    /// at least 2).
    #[arg(long, default_value_t = 16)]
    images: usize,
    /// Rounds of the forward rows (Rust and Python in turn; medians shown).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Images run as one Python process each.
    #[arg(long, default_value_t = 4)]
    subprocess_images: usize,
    /// Python with torch 2.13 (default: $ATELIER_TORCH_PYTHON).
    #[arg(long, env = "ATELIER_TORCH_PYTHON")]
    python: Option<String>,
    /// Where `bench_python.py` and `run_one.py` live.
    #[arg(long, default_value = "models")]
    scripts: PathBuf,
    /// Skip the Python rows.
    #[arg(long)]
    no_python: bool,
    /// Measure resident memory with 1 and with 8 uploads in flight instead.
    #[arg(long)]
    memory: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of the memory probe (a child process per measurement: peak
/// resident memory only grows within a process).
#[derive(Debug, Args)]
pub(crate) struct MemoryProbeArgs {
    #[arg(long)]
    models_dir: PathBuf,
    #[arg(long)]
    model: String,
    #[arg(long)]
    in_flight: usize,
    #[arg(long)]
    max_batch: usize,
    #[arg(long)]
    size: u32,
    #[arg(long)]
    images: usize,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Row {
    size: u32,
    what: &'static str,
    batch: String,
    images: usize,
    images_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "size": self.size, "what": self.what, "batch": self.batch, "images": self.images,
            "images_per_s": round2(self.images_per_s), "p50_ms": round2(self.p50_ms),
            "p99_ms": round2(self.p99_ms),
        })
    }
}

/// The row with the median throughput (`None` for no rows).
fn median(mut rows: Vec<Row>) -> Option<Row> {
    rows.sort_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s));
    let mid = rows.len() / 2;
    (!rows.is_empty()).then(|| rows.swap_remove(mid))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        n
    }
}

fn images_at(base: usize, size: u32) -> usize {
    let area = (f64::from(size) / 256.0).powi(2);
    ((base as f64 / area).round() as usize).max(2)
}

pub(super) async fn run(cfg: Config, a: InferArgs) -> anyhow::Result<()> {
    let file = a.models_dir.join(format!("{}.pt", a.model));
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    if a.memory {
        return memory(&a).await;
    }
    let threads = threads(a.threads);
    let mut icfg = cfg.infer.clone();
    icfg.threads = threads;
    let engine = model::engine(&icfg)?;
    let loaded = {
        let (e, b) = (engine.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || e.load(&b)).await??
    };
    let python = a.python.clone().filter(|_| !a.no_python);
    let mut rows = Vec::new();
    let print = |r: &Row, json: bool| {
        if json {
            println!("{}", r.json());
        } else {
            println!(
                "{:>5}  {:<34} {:>6} {:>7} {:>10.2} {:>10.1} {:>10.1}",
                r.size, r.what, r.batch, r.images, r.images_per_s, r.p50_ms, r.p99_ms
            );
        }
    };
    if !a.json {
        eprintln!(
            "model {} ({}), {threads} threads, device {}, {}",
            a.model,
            file.display(),
            engine.device(),
            engine.precision()
        );
        println!(
            "{:>5}  {:<34} {:>6} {:>7} {:>10} {:>10} {:>10}",
            "size", "what", "batch", "images", "images/s", "p50 ms", "p99 ms"
        );
    }
    // The ceilings: the best this machine does on these threads.
    let ceilings = (
        engine.gemm_gflops(2048, false)?,
        engine.gemm_gflops(2048, true)?,
    );
    let ceiling = if engine.precision() == "bf16" {
        ceilings.1
    } else {
        ceilings.0
    };
    if !a.json {
        eprintln!(
            "ceilings on {threads} threads: fp32 GEMM {:.0} GFLOP/s, bf16 GEMM {:.0} GFLOP/s (2048x2048 products)",
            ceilings.0, ceilings.1
        );
    } else {
        println!(
            "{}",
            json!({"ceilings": {"threads": threads, "fp32_gflops": round2(ceilings.0), "bf16_gflops": round2(ceilings.1)}})
        );
    }
    for &size in &a.sizes {
        let n = images_at(a.images, size);
        let gflop = match &python {
            Some(py) => Some(python_flops(py, &a, &file, size)?),
            None => None,
        };
        let scratch = tempdir("bench-inputs")?;
        let inputs = scratch.path();
        let jpegs: Vec<Vec<u8>> = (0..n as u32)
            .map(|i| {
                let img = codec::test_pattern(size, size, i);
                codec::encode_jpeg(img.as_raw(), size, size, 90)
            })
            .collect::<Result<_, _>>()?;
        for (i, j) in jpegs.iter().enumerate() {
            std::fs::write(inputs.join(format!("img{i:03}.jpg")), j)?;
        }
        for &batch in &a.batches {
            // Rust and Python in turn, `repeat` times: the median of each
            // (this machine's speed drifts by tens of percent in minutes).
            let (mut rs, mut ps) = (Vec::new(), Vec::new());
            for _ in 0..a.repeat.max(1) {
                rs.push(rust_forward(&loaded, size, batch, n, &jpegs)?);
                if let Some(py) = &python {
                    ps.push(python_bench(
                        py, &a, &file, threads, "forward", batch, size, n, inputs,
                    )?);
                }
            }
            for r in [median(rs), median(ps)].into_iter().flatten() {
                print(&r, a.json);
                // The engine's arithmetic rate against the ceiling of its
                // precision (the model's FLOPs as torch counts them).
                if let (Some(g), "rust forward (tch)") = (gflop, r.what) {
                    let rate = g * r.images_per_s;
                    if a.json {
                        println!(
                            "{}",
                            json!({"size": size, "batch": batch, "model_gflop_per_image": g, "rust_gflops": round2(rate), "of_ceiling": round2(rate / ceiling)})
                        );
                    } else {
                        println!(
                            "{size:>5}  model {g:.1} GFLOP/image: the engine runs {rate:.0} GFLOP/s, {:.0}% of the {} GEMM ceiling",
                            100.0 * rate / ceiling,
                            engine.precision()
                        );
                    }
                }
                rows.push(r);
            }
        }
        for &batch in &a.batches {
            let r = rust_pipeline(&cfg, &a, &bytes, threads, size, batch, &jpegs, false).await?;
            print(&r, a.json);
            rows.push(r);
        }
        let r = rust_pipeline(&cfg, &a, &bytes, threads, size, 1, &jpegs, true).await?;
        print(&r, a.json);
        rows.push(r);
        if let Some(py) = &python {
            for &batch in &a.batches {
                let r = python_bench(py, &a, &file, threads, "pipeline", batch, size, n, inputs)?;
                print(&r, a.json);
                rows.push(r);
            }
            let r = subprocess(py, &a, &file, threads, size, inputs)?;
            print(&r, a.json);
            rows.push(r);
        }
    }
    Ok(())
}

/// A scratch directory under the temporary directory, removed when it is
/// dropped: on an error as at the end.
fn tempdir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("atelier-{what}-"))
        .tempdir()?)
}

fn rust_forward(
    m: &Arc<dyn model::Model>,
    size: u32,
    batch: usize,
    n: usize,
    jpegs: &[Vec<u8>],
) -> anyhow::Result<Row> {
    // The same pictures as every other row (a model's speed can depend on
    // the pixels), decoded before timing: the timed call converts, runs
    // and converts back, as the worker's model thread does.
    let caps = codec::Caps {
        max_side: size,
        max_pixels: u64::from(size) * u64::from(size),
    };
    let mut data = Vec::with_capacity(batch * (size * size * 3) as usize);
    for i in 0..batch {
        data.extend_from_slice(codec::decode(&jpegs[i % jpegs.len()], caps)?.as_raw());
    }
    let input = Pixels {
        n: batch,
        height: size,
        width: size,
        data: &data,
    };
    // Warm-up: TorchScript's profiling executor optimizes the graph after
    // its first runs.
    for _ in 0..3 {
        m.run(input)?;
    }
    let calls = n.div_ceil(batch);
    let mut lat = Latencies::default();
    let t0 = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        m.run(input)?;
        lat.record(t.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Row {
        size,
        what: "rust forward (tch)",
        batch: batch.to_string(),
        images: calls * batch,
        images_per_s: (calls * batch) as f64 / secs,
        p50_ms: lat.quantile_ms(0.5),
        p99_ms: lat.quantile_ms(0.99),
    })
}

/// The model's GFLOP per `size`² image, as torch's flop counter counts one
/// forward pass (`bench_python.py --mode flops`).
fn python_flops(py: &str, a: &InferArgs, model: &Path, size: u32) -> anyhow::Result<f64> {
    let out = Command::new(py)
        .arg(a.scripts.join("bench_python.py"))
        .args(["--model", &model.to_string_lossy()])
        .args([
            "--threads",
            "1",
            "--mode",
            "flops",
            "--batch",
            "1",
            "--images",
            "1",
        ])
        .args(["--warmup", "0", "--size", &size.to_string()])
        .output()
        .with_context(|| format!("running {py} {}", a.scripts.display()))?;
    if !out.status.success() {
        bail!(
            "bench_python.py --mode flops failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(last).with_context(|| format!("bench_python.py said {last:?}"))?;
    v["gflop"]
        .as_f64()
        .with_context(|| format!("no gflop in {last:?}"))
}

#[allow(clippy::too_many_arguments)]
fn python_bench(
    py: &str,
    a: &InferArgs,
    model: &Path,
    threads: usize,
    mode: &str,
    batch: usize,
    size: u32,
    n: usize,
    inputs: &Path,
) -> anyhow::Result<Row> {
    let out = Command::new(py)
        .arg(a.scripts.join("bench_python.py"))
        .args(["--model", &model.to_string_lossy()])
        .args(["--threads", &threads.to_string()])
        .args(["--mode", mode])
        .args(["--batch", &batch.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--images", &n.to_string()])
        .args(["--warmup", "3"])
        .args(["--inputs", &inputs.to_string_lossy()])
        .output()
        .with_context(|| format!("running {py} {}", a.scripts.display()))?;
    if !out.status.success() {
        bail!(
            "bench_python.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(last).with_context(|| format!("bench_python.py said {last:?}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Row {
        size,
        what: if mode == "forward" {
            "python forward (same model)"
        } else {
            "python pipeline (in-process)"
        },
        batch: batch.to_string(),
        images: v["images"].as_u64().unwrap_or(0) as usize,
        images_per_s: f("images_per_s"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
    })
}

fn subprocess(
    py: &str,
    a: &InferArgs,
    model: &Path,
    threads: usize,
    size: u32,
    inputs: &Path,
) -> anyhow::Result<Row> {
    let mut lat = Latencies::default();
    let t0 = Instant::now();
    for i in 0..a.subprocess_images {
        let input = inputs.join(format!("img{:03}.jpg", i % images_at(a.images, size)));
        let output = inputs.join(format!("out{i:03}.jpg"));
        let t = Instant::now();
        let st = Command::new(py)
            .arg(a.scripts.join("run_one.py"))
            .args(["--model", &model.to_string_lossy()])
            .args(["--input", &input.to_string_lossy()])
            .args(["--output", &output.to_string_lossy()])
            .args(["--threads", &threads.to_string()])
            .status()?;
        if !st.success() {
            bail!("run_one.py failed on {}", input.display());
        }
        lat.record(t.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Row {
        size,
        what: "python subprocess per image",
        batch: "1".into(),
        images: a.subprocess_images,
        images_per_s: a.subprocess_images as f64 / secs,
        p50_ms: lat.quantile_ms(0.5),
        p99_ms: lat.quantile_ms(0.99),
    })
}

/// An embedded app with the projectors and the worker, one model
/// published under `style`, and its data directory (removed when dropped:
/// keep it until the app has stopped).
async fn pipeline_app(
    cfg: &Config,
    style: &Style,
    model_bytes: &[u8],
    threads: usize,
    max_batch: usize,
    in_flight: usize,
) -> anyhow::Result<(App, tempfile::TempDir)> {
    let data = tempdir("bench-data")?;
    let mut cfg = cfg.clone();
    cfg.kafka = Default::default();
    cfg.views = Default::default();
    cfg.blobs = Default::default();
    cfg.data_dir = data.path().to_owned();
    cfg.http.listen = "127.0.0.1:0".parse()?;
    cfg.infer.threads = threads;
    cfg.infer.max_batch = max_batch;
    cfg.infer.in_flight = in_flight.max(max_batch);
    cfg.infer.models_dir = String::new();
    let app = App::start(
        cfg,
        Roles {
            api: false,
            projector: true,
            infer: true,
        },
    )
    .await?;
    let registry = app.registry.clone().context("inference runs")?;
    publish::publish(
        registry.engine(),
        app.blobs.as_ref(),
        &app.producer,
        style.clone(),
        None,
        Bytes::copy_from_slice(model_bytes),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while registry.get(style).is_none() {
        if Instant::now() > deadline {
            bail!("the model did not load");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((app, data))
}

async fn put_upload(app: &App, style: &Style, jpeg: &[u8], i: usize) -> anyhow::Result<Event> {
    let upload_id = UploadId(uuid::Uuid::now_v7());
    let key = format!("uploads/{upload_id}/bench/original.jpg");
    app.blobs
        .put(&key, Bytes::copy_from_slice(jpeg), "image/jpeg")
        .await?;
    let info = codec::inspect(jpeg, codec::Caps::from(&app.config.uploads))?;
    Ok(Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: crate::edge::now(),
        principal: publish::system_principal("bench"),
        data: EventData::UploadReceived(UploadReceived {
            upload_id,
            session_key: SessionKey::parse(&format!("bench{}", i % 16))?,
            slot: (i % 3) as u8 + 1,
            style: style.clone(),
            object_key: key,
            content_type: "image/jpeg".into(),
            bytes: jpeg.len() as u64,
            width: info.width,
            height: info.height,
            sha256: registry::sha256_hex(jpeg),
        }),
    })
}

async fn wait_done(app: &App, id: UploadId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(card) = app.views.cards().await?.upload(id).await?
            && matches!(card.status, Some(Status::Completed | Status::Failed))
        {
            if card.status == Some(Status::Failed) {
                bail!("upload {id} failed: {:?}", card.error);
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("upload {id} did not finish");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn upload_id(e: &Event) -> UploadId {
    match &e.data {
        EventData::UploadReceived(u) => u.upload_id,
        _ => unreachable!("only uploads are built here"),
    }
}

/// The whole worker: all images queued at once (throughput, latency from
/// append to card), or one at a time (`lone`: the latency of an upload
/// that finds the worker idle).
#[allow(clippy::too_many_arguments)]
async fn rust_pipeline(
    cfg: &Config,
    a: &InferArgs,
    model_bytes: &[u8],
    threads: usize,
    size: u32,
    batch: usize,
    jpegs: &[Vec<u8>],
    lone: bool,
) -> anyhow::Result<Row> {
    let style = Style::parse(&a.model)?;
    let (app, _data) = pipeline_app(cfg, &style, model_bytes, threads, batch, 32).await?;
    // Warm-up: one upload through every stage.
    let warm = put_upload(&app, &style, &jpegs[0], 0).await?;
    app.producer.send(&warm).await?;
    wait_done(&app, upload_id(&warm)).await?;
    let mut events = Vec::new();
    for (i, j) in jpegs.iter().enumerate() {
        events.push(put_upload(&app, &style, j, i + 1).await?);
    }
    let mut lat = Latencies::default();
    let t0 = Instant::now();
    if lone {
        for e in &events {
            let t = Instant::now();
            app.producer.send(e).await?;
            wait_done(&app, upload_id(e)).await?;
            lat.record(t.elapsed());
        }
    } else {
        let mut sent = Vec::new();
        for e in &events {
            app.producer.send(e).await?;
            sent.push(Instant::now());
        }
        for (e, t) in events.iter().zip(sent) {
            wait_done(&app, upload_id(e)).await?;
            lat.record(t.elapsed());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    app.stop().await?;
    Ok(Row {
        size,
        what: if lone {
            "rust pipeline, one at a time"
        } else {
            "rust pipeline (log→S3→card)"
        },
        batch: if lone {
            "1".into()
        } else {
            format!("≤{batch}")
        },
        images: jpegs.len(),
        images_per_s: jpegs.len() as f64 / secs,
        p50_ms: lat.quantile_ms(0.5),
        p99_ms: lat.quantile_ms(0.99),
    })
}

/// Peak and current resident memory of this process, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
}

async fn memory(a: &InferArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    // One upload at a time; eight in flight through one model call each;
    // eight in flight batched into one call (activations for eight images).
    for (in_flight, max_batch) in [(1usize, 1usize), (8, 1), (8, 8)] {
        let out = Command::new(&exe)
            .args(["bench", "infer-memory-probe"])
            .args(["--models-dir", &a.models_dir.to_string_lossy()])
            .args(["--model", &a.model])
            .args(["--in-flight", &in_flight.to_string()])
            .args(["--max-batch", &max_batch.to_string()])
            .args([
                "--size",
                &a.sizes.first().copied().unwrap_or(256).to_string(),
            ])
            .args(["--images", &a.images.max(16).to_string()])
            .args(["--threads", &a.threads.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "memory probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
        println!("{v}");
        results.push(v);
    }
    let peak = |v: &Value| v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
    let unbatched = peak(&results[1]) / peak(&results[0]);
    let batched = peak(&results[2]) / peak(&results[0]);
    println!(
        "{}",
        json!({
            "peak_rss_8_in_flight_over_1": round2(unbatched),
            "peak_rss_8_in_flight_batched_over_1": round2(batched),
        })
    );
    Ok(())
}

/// The probe: the worker on the embedded backends with `in_flight` uploads
/// at a time (and batches of up to that many), then its peak RSS.
pub(super) async fn memory_probe(cfg: Config, p: MemoryProbeArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(p.models_dir.join(format!("{}.pt", p.model)))?;
    let style = Style::parse(&p.model)?;
    let threads = threads(p.threads);
    let (app, _data) =
        pipeline_app(&cfg, &style, &bytes, threads, p.max_batch, p.in_flight).await?;
    let registry = app.registry.clone().context("inference runs")?;
    let jpegs: Vec<Vec<u8>> = (0..p.images as u32)
        .map(|i| {
            let img = codec::test_pattern(p.size, p.size, i);
            codec::encode_jpeg(img.as_raw(), p.size, p.size, 90)
        })
        .collect::<Result<_, _>>()?;
    let (_, before) = rss();
    let t0 = Instant::now();
    for chunk in jpegs.chunks(p.in_flight) {
        let mut ids = Vec::new();
        for (i, j) in chunk.iter().enumerate() {
            let e = put_upload(&app, &style, j, i).await?;
            ids.push(upload_id(&e));
            app.producer.send(&e).await?;
        }
        for id in ids {
            wait_done(&app, id).await?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (peak, now) = rss();
    let loads = registry.loads();
    app.stop().await?;
    println!(
        "{}",
        json!({
            "in_flight": p.in_flight, "max_batch": p.max_batch, "model": p.model, "size": p.size, "images": p.images,
            "model_loads": loads, "rss_before_mib": round2(before), "rss_after_mib": round2(now),
            "peak_rss_mib": round2(peak), "images_per_s": round2(p.images as f64 / secs),
        })
    );
    Ok(())
}
