//! Logging: `RUST_LOG` filters as env_logger does (default `warn`, `debug`
//! with `-d`); records go to stderr until the daemon detaches, then to
//! syslog (or to `-o logfile=PATH`, which takes over stderr).
//!
//! Syslog is a few lines here rather than a crate: the local protocol is one
//! datagram per record, `<PRI>TAG[PID]: MESSAGE`, on the `/dev/log` socket,
//! which is all glibc's syslog(3) does too. The timestamp is left out: rsyslog,
//! journald and busybox syslogd stamp a record that has none with the time
//! they receive it. The `syslog` crate would add dependencies for formats
//! (RFC 5424, TCP, UDP) a local daemon never uses.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use log::{Level, Log, Metadata, Record};
use parking_lot::Mutex;

/// Where syslog listens on Linux.
const SYSLOG_SOCKET: &str = "/dev/log";
/// Facility `daemon` (3), shifted as the priority field wants it.
const LOG_DAEMON: u8 = 3 << 3;

enum Sink {
    /// env_logger's format on fd 2 (the terminal, or the log file once
    /// detached with `logfile=`).
    Stderr,
    /// Connected lazily and again after a failed send: syslog may start
    /// after us or restart under us.
    Syslog(Option<UnixDatagram>),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// env_logger's filtering and format, with records rerouted to syslog once
/// the daemon has detached.
struct Logger {
    inner: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        let mut sink = SINK.lock();
        match &mut *sink {
            Sink::Stderr => {
                drop(sink);
                self.inner.log(record);
            }
            Sink::Syslog(sock) => send_syslog(sock, record),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Syslog severity of a log level (RFC 5424 numbers).
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One record as the datagram syslog expects.
fn syslog_line(record: &Record<'_>, pid: u32) -> String {
    let pri = LOG_DAEMON | severity(record.level());
    // Our own modules are "layerfs" already; name any other (fuser).
    let target = record.target();
    if target.starts_with("layerfs") {
        format!("<{pri}>layerfs[{pid}]: {}", record.args())
    } else {
        format!("<{pri}>layerfs[{pid}]: {target}: {}", record.args())
    }
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    sock.connect(path)?;
    Ok(sock)
}

fn send_syslog(sock: &mut Option<UnixDatagram>, record: &Record<'_>) {
    let line = syslog_line(record, std::process::id());
    // A send on a connection whose listener restarted fails: reconnect
    // once. With no syslog at all the record is lost, as syslog(3) loses it.
    for _ in 0..2 {
        if sock.is_none() {
            *sock = connect(Path::new(SYSLOG_SOCKET)).ok();
        }
        let Some(s) = sock.as_ref() else {
            return;
        };
        if s.send(line.as_bytes()).is_ok() {
            return;
        }
        *sock = None;
    }
}

/// Sets up the logger; `debug` raises the default level.
pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
            .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// After detaching without a log file: records go to syslog.
pub fn to_syslog() {
    *SINK.lock() = Sink::Syslog(connect(Path::new(SYSLOG_SOCKET)).ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_lines_carry_facility_severity_tag_and_pid() {
        let args = format_args!("cannot remove staged {}", "x");
        let rec = Record::builder()
            .args(args)
            .level(Level::Warn)
            .target("layerfs::workdir")
            .build();
        assert_eq!(
            syslog_line(&rec, 42),
            "<28>layerfs[42]: cannot remove staged x"
        );
        let args = format_args!("failed");
        let rec = Record::builder()
            .args(args)
            .level(Level::Error)
            .target("fuser::session")
            .build();
        assert_eq!(
            syslog_line(&rec, 7),
            "<27>layerfs[7]: fuser::session: failed"
        );
    }
}
