//! A private `redis-server` on a free 127.0.0.1 port with the flags a test chooses, in a temporary
//! directory of its own (AOF files, cluster config), killed and removed when dropped. For tests that
//! need a server configured unlike the shared one; the shared Redis is never reconfigured.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRedis {
    child: Child,
    dir: std::path::PathBuf,
    pub port: u16,
    pub url: String,
}

/// A plain server that a test may stall on purpose (`DEBUG SLEEP`: Redis 7 refuses DEBUG by default).
pub const DEBUGGABLE: &[&str] = &["--appendonly", "no", "--enable-debug-command", "local"];

impl PrivateRedis {
    /// Starts `redis-server` with `args` after the port, bind and directory flags.
    pub fn start(args: &[&str]) -> PrivateRedis {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir =
                std::env::temp_dir().join(format!("phone-auth-redis-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .arg("--dir")
                .arg(&dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is on PATH");
            let mut server = PrivateRedis {
                child,
                dir,
                port,
                url: format!("redis://127.0.0.1:{port}"),
            };
            if server.wait_ready(Duration::from_secs(5)) {
                return server;
            }
            // Dropping `server` kills it; another process may have taken the port: try another.
        }
        panic!("could not start a private redis-server");
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url.as_str())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
