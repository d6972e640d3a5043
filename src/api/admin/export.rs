//! `/v1/admin` routes: export. `GET /v1/admin/export` streams a whole view
//! (every poll, or the feed) out for analysts, as JSON Lines or CSV; the
//! CLI's `atelier export` writes it to a file or to S3.
//!
//! Pages are read from the store one after another, and each is encoded
//! and handed to the connection before the next is read, so the process
//! holds one page whatever the view's size (a slow client slows the reads,
//! it does not fill memory). A failure before the first byte is a JSON
//! error; after it, the body ends with an error: the chunked transfer is
//! cut short, so no client can take a truncated export for a whole one.

use std::future::{Future, ready};

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse, StatusCode as Status};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{Stream, TryStreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::contract::{op, raw_response};
use crate::api::feed::TimelineItem;
use crate::api::json::QueryParams;
use crate::api::polls::PollView;
use crate::api::{Admin, ApiError, AppState};
use crate::event::FeedContent;
use crate::fold::poll::PollState;
use crate::view::{FeedCursor, Generations, TimelineRow, ViewError};

/// Rows per store read when `?page=` is absent: large enough that the
/// per-query cost vanishes, small enough that a page is a few hundred KiB.
const DEFAULT_PAGE: usize = 500;
/// The most rows one store read may ask for (the CQL store's own bound).
const MAX_PAGE: usize = 1000;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/admin/export",
        get_with(export, |t| {
            op(
                t,
                "exportView",
                "admin",
                "Export a whole view (JSON Lines or CSV)",
                "Streams every poll (in the store's scan order) or every live feed item \
                 (newest first), reading the view store a page at a time. JSON Lines: one \
                 object per line, a poll as `GET /v1/polls/{id}` answers it, an item as a \
                 `GET /v1/feed` page lists it. CSV: a header, then for polls one record per \
                 question (`poll_id, head, message, owner_id, owner_name, created_at, ends_at, \
                 closed, closed_at, anonymous, multiple_choice, voters` repeated, then \
                 `question_id, question, votes`; a poll's records are consecutive), for items \
                 one record each (`item_id, kind, title, body, name, location, room, \
                 author_id, author_name, created_at, likes, joined`, the fields of other kinds \
                 empty). User text that a spreadsheet would run as a formula (starting `=`, \
                 `+`, `-`, `@`) is prefixed with `'` in CSV. Not a snapshot: what exists for \
                 the whole export appears exactly once; what is created meanwhile may not. A \
                 failure after the first byte cuts the body short.",
                &[503],
            )
        }),
    )
}

/// `GET /v1/admin/export?view=&format=&page=`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// What to export (otherwise: 400 `invalid_query`).
    view: ExportView,
    /// JSON Lines (the default) or CSV.
    #[serde(default)]
    format: Format,
    /// Rows read from the view store at a time (otherwise: 400
    /// `invalid_page`).
    #[schemars(range(min = 1, max = MAX_PAGE), extend("default" = DEFAULT_PAGE))]
    page: Option<crate::api::json::Int<usize>>,
}

/// What to export.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ExportView {
    /// Every poll, in the store's scan order.
    Polls,
    /// Every live feed item, newest first.
    Feed,
}

/// How to write it.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    /// JSON Lines: one object per poll or item.
    #[default]
    Json,
    /// A header record, then flat records (see [`Row`]).
    Csv,
}

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Json => "jsonl",
            Format::Csv => "csv",
        }
    }
}

/// Why an export stopped after its first byte (the client sees the body
/// cut short; the reason is logged here).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("encoding a row: {0}")]
    Encode(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Rows of one store read, and where the next read starts (`None`: there
/// is no next).
type Page<R, C> = (Vec<R>, Option<C>);

/// A streamed export.
struct Export(Response);

impl IntoResponse for Export {
    fn into_response(self) -> Response {
        self.0
    }
}

impl aide::OperationOutput for Export {
    type Inner = Self;

    fn inferred_responses(
        _: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, DocResponse)> {
        let mut r = raw_response(
            "The view, streamed as an attachment (`Content-Disposition`).",
            &["application/x-ndjson", "text/csv"],
            schemars::json_schema!({"type": "string"}),
        );
        r.headers.insert(
            "Content-Disposition".into(),
            crate::api::contract::header(
                "`attachment; filename=\"<view>.<jsonl|csv>\"`.",
                schemars::json_schema!({"type": "string"}),
            ),
        );
        vec![(Some(Status::Code(200)), r)]
    }
}

async fn export(
    State(st): State<AppState>,
    Admin(admin): Admin,
    QueryParams(q): QueryParams<ExportQuery>,
) -> Result<Export, ApiError> {
    let page = q.page.map_or(DEFAULT_PAGE, |p| p.0);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(
            "invalid_page",
            format!("page must be between 1 and {MAX_PAGE}"),
        ));
    }
    tracing::info!(admin = %admin.id, view = ?q.view, format = ?q.format, page, "export");
    let views = st.views.clone();
    // The first page is read before any byte is sent, so a store that is
    // down is a 503 the client can retry, not an empty export.
    let body = match q.view {
        ExportView::Polls => Body::from_stream(stream(
            q.format,
            views.polls().await?.scan_polls(None, page).await?,
            move |after| {
                let views = views.clone();
                async move { views.polls().await?.scan_polls(Some(after), page).await }
            },
            st.shutdown.clone(),
        )),
        ExportView::Feed => Body::from_stream(stream(
            q.format,
            feed_page(&views, None, page).await?,
            move |before| {
                let views = views.clone();
                async move { feed_page(&views, Some(before), page).await }
            },
            st.shutdown.clone(),
        )),
    };
    let name = match q.view {
        ExportView::Polls => "polls",
        ExportView::Feed => "feed",
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(q.format.media_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{name}.{}\"",
        q.format.extension()
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(Export(res))
}

/// A page of the timeline of every kind: newest first, the cursor is the
/// last row's (time, id), so items created meanwhile (at the top) never
/// shift the walk. Deleted items have left the timeline, as they have left
/// the read API (410).
async fn feed_page(
    views: &Generations,
    before: Option<FeedCursor>,
    limit: usize,
) -> Result<Page<TimelineRow, FeedCursor>, ViewError> {
    let rows = views.feed().await?.timeline(None, before, limit).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| (r.created_at, r.item_id)))
        .flatten();
    Ok((rows, next))
}

/// Where the walk of a view stands.
enum Walk<R, C> {
    /// Rows read, to encode (`true`: with the CSV header), and the next
    /// read's cursor.
    Read(Vec<R>, Option<C>, bool),
    /// Read the page after this cursor next.
    After(C),
    /// Nothing left.
    End,
}

/// The body: `first` encoded, then each page `fetch` reads after the
/// previous cursor, one at a time, read only when the connection asks for
/// more. Ends with an error (and nothing after it) when a read or an
/// encoding fails or the server begins to shut down.
fn stream<R, C, F, Fut>(
    format: Format,
    first: Page<R, C>,
    fetch: F,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, ExportError>> + Send + 'static
where
    R: Row + Send + 'static,
    C: Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<R, C>, ViewError>> + Send + 'static,
{
    let (rows, next) = first;
    futures::stream::try_unfold(
        (Walk::Read(rows, next, true), fetch),
        move |(walk, mut fetch)| {
            let shutdown = shutdown.clone();
            async move {
                let (rows, next, header) = match walk {
                    Walk::End => return Ok(None),
                    Walk::Read(rows, next, header) => (rows, next, header),
                    Walk::After(cursor) => {
                        // Shutdown waits for open answers: cut this one
                        // short, visibly, rather than hold the process for
                        // the rest of a large view.
                        if shutdown.is_cancelled() {
                            return Err(ExportError::ShuttingDown);
                        }
                        let (rows, next) = fetch(cursor).await?;
                        (rows, next, false)
                    }
                };
                let bytes = encode(format, rows, header)?;
                let walk = next.map_or(Walk::End, Walk::After);
                Ok(Some((bytes, (walk, fetch))))
            }
        },
    )
    // An empty chunk would read as the end of a chunked body.
    .try_filter(|b| ready(!b.is_empty()))
    .inspect_err(|e| tracing::warn!(error = %e, "export cut short"))
}

/// A page's bytes in `format`.
fn encode<R: Row>(format: Format, rows: Vec<R>, header: bool) -> Result<Bytes, ExportError> {
    let encode_err = |e: &dyn std::fmt::Display| ExportError::Encode(e.to_string());
    match format {
        Format::Json => {
            let mut out = Vec::new();
            for r in rows {
                r.json(&mut out).map_err(|e| encode_err(&e))?;
                out.push(b'\n');
            }
            Ok(out.into())
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::new());
            if header {
                w.write_record(R::HEADER).map_err(|e| encode_err(&e))?;
            }
            for r in rows {
                r.csv(&mut w).map_err(|e| encode_err(&e))?;
            }
            w.into_inner().map(Bytes::from).map_err(|e| encode_err(&e))
        }
    }
}

/// A row of an export: one JSON object, and one or more CSV records.
trait Row {
    /// The CSV header record.
    const HEADER: &'static [&'static str];
    /// Writes the row's JSON object (without the newline).
    fn json(self, out: &mut Vec<u8>) -> serde_json::Result<()>;
    /// Writes the row's CSV records.
    fn csv(self, w: &mut csv::Writer<Vec<u8>>) -> csv::Result<()>;
}

/// A poll is the object `GET /v1/polls/{id}` answers. In CSV it is one
/// record per question (the poll's columns repeated, then the question's
/// id, text and votes): the long layout a spreadsheet pivots or filters
/// as it is, without splitting cells; a poll's records are consecutive.
impl Row for PollState {
    const HEADER: &'static [&'static str] = &[
        "poll_id",
        "head",
        "message",
        "owner_id",
        "owner_name",
        "created_at",
        "ends_at",
        "closed",
        "closed_at",
        "anonymous",
        "multiple_choice",
        "voters",
        "question_id",
        "question",
        "votes",
    ];

    fn json(self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, &PollView::from(self))
    }

    fn csv(self, w: &mut csv::Writer<Vec<u8>>) -> csv::Result<()> {
        let poll = [
            self.poll_id.to_string(),
            cell(&self.head),
            cell(&self.message),
            cell(self.owner.id.as_str()),
            cell(&self.owner.name),
            time(self.created_at),
            self.ends_at.map(time).unwrap_or_default(),
            self.closed_at.is_some().to_string(),
            self.closed_at.map(time).unwrap_or_default(),
            self.anonymous.to_string(),
            self.multiple_choice.to_string(),
            self.voters.to_string(),
        ];
        if self.questions.is_empty() {
            // Never the case for a valid poll; still, no poll goes missing.
            return w.write_record(poll.iter().chain(&[
                String::new(),
                String::new(),
                String::new(),
            ]));
        }
        for q in &self.questions {
            let votes = self
                .tallies
                .get(usize::from(q.id))
                .copied()
                .unwrap_or_default();
            let question = [q.id.to_string(), cell(&q.text), votes.to_string()];
            w.write_record(poll.iter().chain(&question))?;
        }
        Ok(())
    }
}

/// A feed item is the object a `GET /v1/feed` page lists. In CSV, one
/// record per item, each kind's fields in their own columns (empty for
/// the other kinds).
impl Row for TimelineRow {
    const HEADER: &'static [&'static str] = &[
        "item_id",
        "kind",
        "title",
        "body",
        "name",
        "location",
        "room",
        "author_id",
        "author_name",
        "created_at",
        "likes",
        "joined",
    ];

    fn json(self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, &TimelineItem::from(self))
    }

    fn csv(self, w: &mut csv::Writer<Vec<u8>>) -> csv::Result<()> {
        let none = String::new;
        let [title, body, name, location, room] = match &self.content {
            FeedContent::Post { title, body } => [cell(title), cell(body), none(), none(), none()],
            FeedContent::Game { name, location } => {
                [none(), none(), cell(name), cell(location), none()]
            }
            FeedContent::Team { room } => [none(), none(), none(), none(), cell(room)],
        };
        w.write_record([
            self.item_id.to_string(),
            self.kind.as_str().to_owned(),
            title,
            body,
            name,
            location,
            room,
            cell(self.author.id.as_str()),
            cell(&self.author.name),
            time(self.created_at),
            self.likes.to_string(),
            self.joined.to_string(),
        ])
    }
}

/// A time as the JSON answers write it (RFC 3339, UTC, `Z`).
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A user-written text as a CSV cell. Spreadsheets run a cell that starts
/// with `=`, `+`, `-` or `@` (or a tab or carriage return before one) as a
/// formula, so such a text from a user would run on the analyst's machine:
/// it gets a leading `'`, which spreadsheets read as "text" (OWASP's advice
/// against CSV injection). The JSON Lines export keeps texts as they are.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;

    use super::*;

    /// A row that is its number.
    struct N(u32);

    impl Row for N {
        const HEADER: &'static [&'static str] = &["n"];
        fn json(self, out: &mut Vec<u8>) -> serde_json::Result<()> {
            serde_json::to_writer(out, &self.0)
        }
        fn csv(self, w: &mut csv::Writer<Vec<u8>>) -> csv::Result<()> {
            w.write_record([self.0.to_string()])
        }
    }

    /// Pages of two numbers up to `last`; the read after `fail_after`
    /// fails. Counts reads.
    fn pages(
        last: u32,
        fail_after: Option<u32>,
        reads: Arc<AtomicUsize>,
    ) -> impl FnMut(u32) -> std::future::Ready<Result<Page<N, u32>, ViewError>> {
        move |after| {
            reads.fetch_add(1, Ordering::SeqCst);
            if fail_after == Some(after) {
                return ready(Err(ViewError::Unavailable("down".into())));
            }
            let rows: Vec<N> = (after + 1..=(after + 2).min(last)).map(N).collect();
            let next = rows.last().map(|n| n.0).filter(|&n| n < last);
            ready(Ok((rows, next)))
        }
    }

    async fn collect(
        s: impl Stream<Item = Result<Bytes, ExportError>>,
    ) -> (String, Option<ExportError>) {
        let mut text = String::new();
        let mut err = None;
        let mut s = std::pin::pin!(s);
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => text.push_str(std::str::from_utf8(&b).unwrap()),
                Err(e) => {
                    assert!(err.is_none(), "nothing follows an error");
                    err = Some(e);
                }
            }
        }
        (text, err)
    }

    #[tokio::test]
    async fn pages_stream_one_read_at_a_time() {
        let reads = Arc::new(AtomicUsize::new(0));
        let first = (vec![N(1), N(2)], Some(2));
        let s = stream(
            Format::Csv,
            first,
            pages(5, None, reads.clone()),
            CancellationToken::new(),
        );
        let mut s = std::pin::pin!(s);
        assert_eq!(s.next().await.unwrap().unwrap(), "n\n1\n2\n");
        assert_eq!(
            reads.load(Ordering::SeqCst),
            0,
            "no read ahead of the client"
        );
        assert_eq!(s.next().await.unwrap().unwrap(), "3\n4\n");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let (rest, err) = collect(s).await;
        assert_eq!(rest, "5\n");
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn a_failed_read_ends_the_body_with_an_error() {
        let reads = Arc::new(AtomicUsize::new(0));
        let s = stream(
            Format::Json,
            (vec![N(1), N(2)], Some(2)),
            pages(9, Some(4), reads),
            CancellationToken::new(),
        );
        let (text, err) = collect(s).await;
        assert_eq!(text, "1\n2\n3\n4\n");
        assert!(matches!(err, Some(ExportError::View(_))), "{err:?}");
    }

    #[tokio::test]
    async fn shutdown_cuts_the_body_short() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let reads = Arc::new(AtomicUsize::new(0));
        let s = stream(
            Format::Json,
            (vec![N(1)], Some(1)),
            pages(9, None, reads.clone()),
            shutdown,
        );
        let (text, err) = collect(s).await;
        assert_eq!(text, "1\n");
        assert!(matches!(err, Some(ExportError::ShuttingDown)), "{err:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_empty_view_is_a_header_or_nothing() {
        let reads = Arc::new(AtomicUsize::new(0));
        let csv = stream(
            Format::Csv,
            (Vec::<N>::new(), None),
            pages(0, None, reads.clone()),
            CancellationToken::new(),
        );
        assert_eq!(collect(csv).await.0, "n\n");
        let json = stream(
            Format::Json,
            (Vec::<N>::new(), None),
            pages(0, None, reads),
            CancellationToken::new(),
        );
        let mut json = std::pin::pin!(json);
        assert!(json.next().await.is_none(), "no empty chunk is sent");
    }

    #[test]
    fn a_poll_is_one_csv_record_per_question() {
        use crate::event::{PollId, Principal, Question, UserId};
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let poll = PollState {
            poll_id: PollId(uuid::Uuid::now_v7()),
            owner: Principal {
                id: UserId::parse("ann").unwrap(),
                name: "Ann, \"A\"".into(),
                avatar_url: None,
            },
            created_at: at,
            head: "=HYPERLINK(\"x\")".into(),
            message: "two\nlines".into(),
            ends_at: None,
            anonymous: false,
            multiple_choice: true,
            questions: ["Pizza", "Sushi"]
                .iter()
                .enumerate()
                .map(|(i, t)| Question {
                    id: i as u16,
                    text: (*t).into(),
                })
                .collect(),
            closed_at: Some(at),
            tallies: vec![3, 5],
            voters: 7,
            recent: vec![],
            rejected: Default::default(),
            position: Default::default(),
        };
        let id = poll.poll_id.to_string();
        let bytes = encode(Format::Csv, vec![poll], true).unwrap();
        let mut r = csv::Reader::from_reader(&bytes[..]);
        assert_eq!(r.headers().unwrap(), PollState::HEADER);
        let records: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        let t = "2023-11-14T22:13:20.123456Z";
        let common = [
            id.as_str(),
            "'=HYPERLINK(\"x\")",
            "two\nlines",
            "ann",
            "Ann, \"A\"",
            t,
            "",
            "true",
            t,
            "false",
            "true",
            "7",
        ];
        let want: Vec<Vec<&str>> = [["0", "Pizza", "3"], ["1", "Sushi", "5"]]
            .iter()
            .map(|q| common.iter().chain(q).copied().collect())
            .collect();
        let got: Vec<Vec<&str>> = records.iter().map(|r| r.iter().collect()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn formulas_become_text_in_csv() {
        for f in ["=1+1", "+1", "-1+1", "@SUM(A1)", "\t=1"] {
            assert_eq!(cell(f), format!("'{f}"));
        }
        for t in ["Pizza", "a=b", "1-2", ""] {
            assert_eq!(cell(t), t);
        }
    }
}
