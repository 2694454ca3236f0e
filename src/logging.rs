//! Logging: `RUST_LOG` filters as env_logger does; records go to stderr
//! until the daemon detaches, then to syslog (or to `-o logfile=PATH`,
//! which takes over stderr).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;

use parking_lot::Mutex;

enum Sink {
    Stderr,
    Syslog(UnixDatagram),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// env_logger's output, forwarded to wherever the sink points now.
struct Forward;

impl Write for Forward {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &*SINK.lock() {
            Sink::Stderr => io::stderr().write_all(buf)?,
            Sink::Syslog(sock) => {
                // LOG_DAEMON (3 << 3) | LOG_NOTICE (5); the level is in the text.
                let text = String::from_utf8_lossy(buf);
                let msg = format!("<29>layerfs[{}]: {}", std::process::id(), text.trim_end());
                let _ = sock.send(msg.as_bytes());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets up the logger; `debug` raises the default level.
pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    b.target(env_logger::Target::Pipe(Box::new(Forward)));
    let _ = b.try_init();
}

/// After detaching: send records to syslog when it listens on /dev/log.
pub fn to_syslog() {
    if let Ok(sock) = UnixDatagram::unbound() {
        if sock.connect("/dev/log").is_ok() {
            *SINK.lock() = Sink::Syslog(sock);
        }
    }
}
