//! Log output as runc writes it: `--log FILE` (default stderr), `--log-format text|json`.
//! JSON lines are `{"level","msg","time"}` with an RFC 3339 time, one per event, which is what
//! podman and containerd's shim parse to report a runtime's failure.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::{GlobalOpts, LogFormat};
use crate::state::rfc3339_now;

/// runc's (logrus's) event layout.
struct RuncFormat {
    json: bool,
}

#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S, N> FormatEvent<S, N> for RuncFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        let level = level_name(event.metadata().level());
        let time = rfc3339_now();
        if self.json {
            let line = serde_json::json!({ "level": level, "msg": message.0, "time": time });
            writeln!(writer, "{line}")
        } else {
            writeln!(writer, "time=\"{time}\" level={level} msg={:?}", message.0)
        }
    }
}

/// Sets up logging from the global options. Without `--log`, only warnings and errors go to
/// stderr (in the chosen format), so engines reading stderr see just the failure.
pub fn init(global: &GlobalOpts) {
    init_with(
        global.log.as_deref(),
        global.debug,
        global.log_format == LogFormat::Json,
    );
}

/// Sets up logging to `log` (else stderr): debug messages with `debug`, else info messages
/// into a file and only warnings and errors onto stderr; JSON lines with `json`.
pub fn init_with(log: Option<&Path>, debug: bool, json: bool) {
    let level = if debug {
        Level::DEBUG
    } else if log.is_some() {
        Level::INFO
    } else {
        Level::WARN
    };
    let builder = tracing_subscriber::fmt()
        .event_format(RuncFormat { json })
        .with_max_level(level);
    let file = log.and_then(|path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("twinbox: cannot open log file {}: {e}", path.display()))
            .ok()
    });
    let _ = match file {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Reports a command's failure: one error line in the log (the line podman reads), and the
/// message on stderr when the log is a file.
pub fn report_error(global: &GlobalOpts, message: &str) {
    tracing::error!("{message}");
    if global.log.is_some() {
        eprintln!("twinbox: {message}");
    }
}
