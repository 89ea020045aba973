//! Prometheus metrics: one server's registry, and the text that `/metrics`
//! serves (see `scrape` for the endpoint).
//!
//! This module keeps the registry and the exporter, and imports nothing of
//! the rooms it serves: each room declares its own handles (counters,
//! gauges and [`AtomicHistogram`]s) from a [`Metrics`] when it is built,
//! and records into them itself. Counters and gauges are registered with
//! this server's own `metrics-exporter-prometheus` recorder (no global
//! recorder, so several servers can live in one process, as in the tests).
//! Latency and size histograms are [`AtomicHistogram`]s, lock- and
//! allocation-free on the request path, rendered beside the recorder's
//! output by the [`Histograms`] their rooms register. Figures that a room
//! keeps itself, such as the cache's counters kept under its partition
//! locks, are read by the [`Collect`] sources it registers, at each scrape.
//!
//! Names follow Prometheus conventions: `readstates_` prefix, base units,
//! `_seconds`, `_bytes`, `_total`. Labels come from small fixed sets.

mod histogram;
mod labels;

pub use histogram::{AtomicHistogram, LATENCY_BUCKETS, SIZE_BUCKETS};
pub(crate) use labels::label_values;
pub use metrics::{Counter, Gauge, Unit};

use std::fmt::Write as _;
use std::sync::Arc;

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

const METADATA: Metadata<'static> = Metadata::new("readstates", Level::INFO, Some(module_path!()));

/// Histograms a room renders itself, after the recorder's counters and
/// gauges, in the Prometheus text format (see [`render_histograms`]).
pub trait Histograms: Send + Sync {
    fn render(&self, out: &mut String);
}

/// A source of figures that a room keeps itself, read at each scrape to set
/// its gauges and counters.
pub trait Collect: Send + Sync {
    fn collect(&self);
}

/// The registry of one server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Renders the recorder's counters and gauges.
    handle: PrometheusHandle,
    /// Rendered in registration order, after the recorder's output.
    histograms: Mutex<Vec<Arc<dyn Histograms>>>,
    /// Run before each render.
    sources: Mutex<Vec<Arc<dyn Collect>>>,
    process_resident_memory: Gauge,
}

impl Metrics {
    /// A registry holding only the process's own metrics: the build and
    /// its resident memory. The rooms add theirs as they are built.
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let build_info = {
            let name = "readstates_build_info";
            recorder.describe_gauge(
                name.into(),
                None,
                "Always 1; the version label names the build.".into(),
            );
            let labels = vec![Label::new("version", env!("CARGO_PKG_VERSION"))];
            recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
        };
        build_info.set(1.0);
        let process_resident_memory = {
            let name = "readstates_process_resident_memory_bytes";
            recorder.describe_gauge(
                name.into(),
                Some(Unit::Bytes),
                "Resident memory of the process.".into(),
            );
            recorder.register_gauge(&Key::from_static_name(name), &METADATA)
        };
        Arc::new(Self {
            recorder,
            handle,
            histograms: Mutex::new(Vec::new()),
            sources: Mutex::new(Vec::new()),
            process_resident_memory,
        })
    }

    /// Describes and registers the unlabelled counter `name`.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.recorder
            .describe_counter(name.into(), None, help.into());
        self.recorder
            .register_counter(&Key::from_static_name(name), &METADATA)
    }

    /// Describes the counter `name`, whose one label is `label`, and
    /// registers one counter for each of `values`, in their order (an
    /// enum's variants, say, so that recording indexes the array).
    pub fn counters<const N: usize>(
        &self,
        name: &'static str,
        label: &'static str,
        help: &'static str,
        values: [&'static str; N],
    ) -> [Counter; N] {
        self.recorder
            .describe_counter(name.into(), None, help.into());
        values.map(|value| self.counter_with(name, &[(label, value)]))
    }

    /// Describes the counter `name`, to be registered with
    /// [`Metrics::counter_with`] for each set of label values.
    pub fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.recorder
            .describe_counter(name.into(), None, help.into());
    }

    /// Registers the counter `name` with these labels.
    pub fn counter_with(
        &self,
        name: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, to_labels(labels)), &METADATA)
    }

    /// Describes and registers the unlabelled gauge `name`.
    pub fn gauge(&self, name: &'static str, unit: Option<Unit>, help: &'static str) -> Gauge {
        self.recorder.describe_gauge(name.into(), unit, help.into());
        self.recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    /// Describes the gauge `name`, to be registered with
    /// [`Metrics::gauge_with`] for each set of label values.
    pub fn describe_gauge(&self, name: &'static str, help: &'static str) {
        self.recorder.describe_gauge(name.into(), None, help.into());
    }

    /// Registers the gauge `name` with these labels.
    pub fn gauge_with(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, to_labels(labels)), &METADATA)
    }

    /// Registers the unlabelled histogram `name` over `bounds`, rendered
    /// at each scrape.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
    ) -> Arc<AtomicHistogram> {
        let histogram = Arc::new(AtomicHistogram::new(bounds));
        self.register_histograms(Arc::new(Unlabelled {
            name,
            help,
            histogram: Arc::clone(&histogram),
        }));
        histogram
    }

    /// Renders `histograms` at each scrape. Each family is registered once
    /// per server.
    pub fn register_histograms(&self, histograms: Arc<dyn Histograms>) {
        self.histograms.lock().push(histograms);
    }

    /// Reads `source` at each scrape, before rendering.
    pub fn register_source(&self, source: Arc<dyn Collect>) {
        self.sources.lock().push(source);
    }

    /// Reads every registered source, then renders everything in the
    /// Prometheus text format.
    pub fn render(&self) -> String {
        // Cloned out, so that no source or family runs under the lists'
        // locks.
        let sources = self.sources.lock().clone();
        for source in &sources {
            source.collect();
        }
        if let Some(bytes) = resident_memory_bytes() {
            self.process_resident_memory.set(bytes as f64);
        }
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        let histograms = self.histograms.lock().clone();
        for family in &histograms {
            family.render(&mut text);
        }
        text
    }
}

/// One histogram without labels.
struct Unlabelled {
    name: &'static str,
    help: &'static str,
    histogram: Arc<AtomicHistogram>,
}

impl Histograms for Unlabelled {
    fn render(&self, out: &mut String) {
        render_histograms(out, self.name, self.help, [("", &*self.histogram)]);
    }
}

/// Appends the histogram family `name`: its `# HELP` and `# TYPE` lines,
/// then each histogram of `members` with its labels (`key="value",...`).
pub fn render_histograms<'a, L: AsRef<str>>(
    out: &mut String,
    name: &str,
    help: &str,
    members: impl IntoIterator<Item = (L, &'a AtomicHistogram)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, histogram) in members {
        histogram.render(name, labels.as_ref(), out);
    }
}

fn to_labels(labels: &[(&'static str, &'static str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|&(key, value)| Label::new(key, value))
        .collect()
}

/// Returns the process's resident memory, from `/proc/self/statm`.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * 4096)
}
