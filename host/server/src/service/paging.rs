//! Filling one page when some rows are judged after they are read (policy plugins, scope
//! constraints on past versions): rows are read in order, batch by batch, and only the ones
//! kept count towards the page. Shared by search, history and `$everything`, so their pages,
//! links and cursors are made the same way.

use futures_util::future::BoxFuture;

use crate::fhir::outcome::FhirError;

/// Rows looked at for one page at most, when filtering hides many: past this the page ends
/// early, and its `next` link goes on from where the scan stopped.
pub const MAX_EXAMINED: usize = 5000;

/// What a scan for one page found.
pub struct Scan<T, P> {
    /// Up to `count + 1` kept rows, in reading order (the extra one says more follow).
    pub kept: Vec<T>,
    /// The scan read everything there was.
    pub exhausted: bool,
    /// The position of the last row read (kept or not).
    pub stopped_at: Option<P>,
}

impl<T, P> Scan<T, P> {
    /// Cuts the page to `count` rows; where its next page starts: after the last kept row when
    /// more were kept, after where the scan stopped when it stopped early, nowhere at the end.
    pub fn cut(&mut self, count: usize, position: impl Fn(&T) -> P) -> Option<P> {
        if self.kept.len() > count {
            self.kept.truncate(count);
            self.kept.last().map(position)
        } else if self.exhausted {
            None
        } else {
            self.stopped_at.take()
        }
    }
}

/// Reads from `from` on with `read(position, limit) -> (rows, more)` and keeps what `keep`
/// keeps, until `count + 1` rows are kept, the rows run out, or [`MAX_EXAMINED`] were read.
/// `read_ahead` reads at least that many rows a batch (when keeping drops rows, fewer round
/// trips; 1 when nothing is dropped).
pub async fn fill<'a, T, P: Clone>(
    count: usize,
    from: Option<P>,
    read_ahead: usize,
    position: impl Fn(&T) -> P,
    mut read: impl FnMut(Option<P>, usize) -> BoxFuture<'a, Result<(Vec<T>, bool), FhirError>>,
    mut keep: impl FnMut(Vec<T>) -> BoxFuture<'a, Result<Vec<T>, FhirError>>,
) -> Result<Scan<T, P>, FhirError> {
    let mut scan = Scan { kept: Vec::with_capacity(count + 1), exhausted: false, stopped_at: from };
    let mut examined = 0;
    while scan.kept.len() <= count {
        let wanted = (count + 1 - scan.kept.len()).max(read_ahead);
        let (rows, more) = read(scan.stopped_at.clone(), wanted).await?;
        examined += rows.len();
        if let Some(last) = rows.last() {
            scan.stopped_at = Some(position(last));
        }
        scan.kept.extend(keep(rows).await?);
        if !more {
            scan.exhausted = true;
            break;
        }
        if examined >= MAX_EXAMINED {
            break;
        }
    }
    Ok(scan)
}
