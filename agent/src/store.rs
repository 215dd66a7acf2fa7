//! The latest samples of every collector, and the encoded exposition cached
//! until one of them changes.
//!
//! Reads nothing from the host, needs nothing. Collectors publish here on their
//! own schedule; a scrape only encodes (at most once per change, per format)
//! and never waits for a collection, so scrapes cost almost nothing however
//! many servers scrape and how often.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use hostwatch_collectors::MetricSet;
use hostwatch_exporters::Format;

/// One encoded body, valid while the store's generation is `generation`.
#[derive(Debug)]
struct Cached {
    generation: u64,
    body: Bytes,
}

#[derive(Debug, Default)]
pub struct Store {
    sets: RwLock<BTreeMap<&'static str, Arc<MetricSet>>>,
    generation: AtomicU64,
    /// Indexed by [`slot`]: format and compression.
    cache: [Mutex<Option<Cached>>; 4],
}

fn slot(format: Format, gzip: bool) -> usize {
    (match format {
        Format::PrometheusText => 0,
        Format::OpenMetrics => 2,
    }) + usize::from(gzip)
}

impl Store {
    /// Replaces the samples published under `source`, returning the previous set
    /// so its buffers can be reused when no scrape still holds it.
    pub fn publish(&self, source: &'static str, set: Arc<MetricSet>) -> Option<Arc<MetricSet>> {
        let previous = self
            .sets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(source, set);
        self.generation.fetch_add(1, Ordering::Release);
        previous
    }

    /// The samples last published under `source`: what actuators read.
    pub fn get(&self, source: &str) -> Option<Arc<MetricSet>> {
        self.sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source)
            .cloned()
    }

    /// Keeps only the sources `keep` accepts (a reload may disable collectors).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.sets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|source, _| keep(source));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current exposition in `format`, gzip-compressed when `gzip`.
    pub fn exposition(&self, format: Format, gzip: bool) -> Result<Bytes, std::fmt::Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut cached = self.cache[slot(format, gzip)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cached.as_ref().filter(|c| c.generation == generation) {
            return Ok(hit.body.clone());
        }
        let sets: Vec<Arc<MetricSet>> = self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let text = hostwatch_exporters::encode(format, sets)?;
        let body = if gzip {
            Bytes::from(gzip_bytes(text.as_bytes()))
        } else {
            Bytes::from(text)
        };
        *cached = Some(Cached {
            generation,
            body: body.clone(),
        });
        Ok(body)
    }
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use hostwatch_collectors::Desc;

    use super::*;

    static X: Desc = Desc::gauge("x", "X.", &[]);

    fn set(value: f64) -> Arc<MetricSet> {
        let mut set = MetricSet::default();
        set.push(&X, &[], value);
        Arc::new(set)
    }

    #[test]
    fn cache_follows_publications() {
        let store = Store::default();
        store.publish("a", set(1.0));
        let first = store.exposition(Format::PrometheusText, false).unwrap();
        assert!(std::str::from_utf8(&first).unwrap().ends_with("x 1.0\n"));
        // Same generation: the very same bytes.
        assert_eq!(
            store.exposition(Format::PrometheusText, false).unwrap().as_ptr(),
            first.as_ptr()
        );
        store.publish("a", set(2.0));
        let second = store.exposition(Format::PrometheusText, false).unwrap();
        assert!(std::str::from_utf8(&second).unwrap().ends_with("x 2.0\n"));

        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&store.exposition(Format::PrometheusText, true).unwrap()[..])
            .read_to_string(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped.as_bytes(), &second[..]);

        store.retain(|source| source != "a");
        assert_eq!(store.exposition(Format::PrometheusText, false).unwrap().len(), 0);
    }

    #[test]
    fn publish_hands_back_the_previous_set() {
        let store = Store::default();
        assert!(store.publish("a", set(1.0)).is_none());
        let previous = store.publish("a", set(2.0)).unwrap();
        assert_eq!(previous.get("x", &[]), Some(1.0));
        assert_eq!(store.get("a").unwrap().get("x", &[]), Some(2.0));
        assert!(store.get("b").is_none());
    }
}
