//! A private Redis Cluster on free 127.0.0.1 ports, in a temporary directory of its own, killed and
//! removed when dropped: three masters, or three masters with one replica each, joined by
//! `redis-cli --cluster create`, as `scripts/redis-cluster` does for CI and benchmarks. The nodes are
//! child processes of the test (not daemons), so a failed assertion or a panic still tears them down.
//!
//! `cluster-node-timeout` is 1 s here (Redis's default is 15 s): a failover takes about the node timeout
//! plus the replica's election delay (500 ms + up to 500 ms random), measured at about 2.5 s on this
//! machine, instead of the 16 s or more a test would otherwise wait.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster-node-timeout` for tests, in ms: short, so a killed master is failed over in seconds.
pub const TEST_NODE_TIMEOUT_MS: u64 = 1000;

pub struct ClusterNode {
    child: Option<Child>,
    pub port: u16,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// One line of `CLUSTER NODES` as a surviving node sees it.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The id of the master this node replicates, for a replica.
    pub master_id: Option<String>,
    /// Inclusive slot ranges served, for a master.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

pub struct PrivateCluster {
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl PrivateCluster {
    /// Three masters, no replicas: for routing and hash-slot behaviour.
    pub fn three_masters() -> PrivateCluster {
        PrivateCluster::start(3, 0, TEST_NODE_TIMEOUT_MS)
    }

    /// Three masters and one replica of each: for failover.
    pub fn three_masters_three_replicas() -> PrivateCluster {
        PrivateCluster::start(3, 1, TEST_NODE_TIMEOUT_MS)
    }

    /// `masters` masters with `replicas` replicas each. Retries with other ports if a start fails
    /// (another process may take a port between our check and the server's bind).
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u64) -> PrivateCluster {
        let mut last = String::new();
        for _ in 0..3 {
            match PrivateCluster::try_start(masters, replicas, node_timeout_ms) {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("could not start a private Redis Cluster: {last}");
    }

    fn try_start(masters: usize, replicas: usize, node_timeout_ms: u64) -> Result<PrivateCluster, String> {
        let count = masters * (1 + replicas);
        // Every port of every node is held by a listener until all are picked, so no two are the same.
        let listeners: Vec<std::net::TcpListener> = (0..2 * count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound address").port())
            .collect();
        drop(listeners);

        let dir = std::env::temp_dir().join(format!("phone-auth-cluster-{}", uuid::Uuid::new_v4().simple()));
        let mut cluster = PrivateCluster {
            nodes: Vec::new(),
            dir,
        };
        for pair in ports.chunks(2) {
            let (port, bus_port) = (pair[0], pair[1]);
            let node_dir = cluster.dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                ])
                .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is on PATH");
            cluster.nodes.push(ClusterNode {
                child: Some(child),
                port,
            });
        }
        for node in &cluster.nodes {
            if !wait_for(Duration::from_secs(5), || ping(node.port)) {
                return Err(format!("node {} did not answer", node.port));
            }
        }

        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is on PATH");
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        if !cluster.wait_healthy(Duration::from_secs(30)) {
            return Err("the cluster did not become healthy".into());
        }
        Ok(cluster)
    }

    /// The URLs of the nodes still running, as a cluster client's initial nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(ClusterNode::url)
            .collect()
    }

    /// A cluster client with the crate's defaults, on every running node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("a cluster client")
    }

    /// True once every running node says `cluster_state:ok`, knows every slot, and every running
    /// replica's link to its master is up (a replica that never synced cannot be promoted).
    pub fn is_healthy(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|n| {
            let Ok(info) = query::<String>(n.port, &["CLUSTER", "INFO"]) else {
                return false;
            };
            let Ok(repl) = query::<String>(n.port, &["INFO", "replication"]) else {
                return false;
            };
            info.lines().any(|l| l.trim() == "cluster_state:ok")
                && info.lines().any(|l| l.trim() == "cluster_slots_ok:16384")
                && (repl.lines().any(|l| l.trim() == "role:master")
                    || repl.lines().any(|l| l.trim() == "master_link_status:up"))
        })
    }

    pub fn wait_healthy(&self, within: Duration) -> bool {
        wait_for(within, || self.is_healthy())
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    pub fn nodes_view(&self) -> Vec<NodeLine> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(text) = query::<String>(node.port, &["CLUSTER", "NODES"]) {
                return text.lines().filter_map(parse_node_line).collect();
            }
        }
        panic!("no node of the private cluster answers");
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`: the server's own answer, `{tag}` included).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
            .port;
        query::<u16>(port, &["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT")
    }

    /// The port of the master serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.nodes_view()
            .into_iter()
            .find(|n| n.is_master() && !n.is_failed() && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    /// The ports of the replicas of the master on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let view = self.nodes_view();
        let id = view
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.id.clone())
            .expect("a known node");
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// SIGKILL, like a crashed machine: no goodbye to the other nodes, no last write flushed.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a running node serves the slots `killed` served (its replica was promoted) and the
    /// cluster is healthy again; returns the new master's port and how long that took from `since`.
    /// `None` if it did not happen `within`.
    pub fn wait_promoted(
        &self,
        killed: u16,
        slot: u16,
        since: Instant,
        within: Duration,
    ) -> Option<(u16, Duration)> {
        let done = wait_for(within, || {
            self.nodes_view().iter().any(|n| {
                n.port != killed
                    && n.is_master()
                    && !n.is_failed()
                    && n.serves(slot)
                    && self.nodes.iter().any(|r| r.port == n.port && r.is_running())
            }) && self.is_healthy()
        });
        done.then(|| (self.master_of_slot(slot), since.elapsed()))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command on a fresh plain connection to one node (no cluster routing), with short timeouts so a
/// dead node answers with an error rather than a hang.
pub fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

fn ping(port: u16) -> bool {
    query::<String>(port, &["PING"]).is_ok_and(|p| p == "PONG")
}

fn wait_for(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<id> <ip:port@bus> <flags> <master-id|-> <ping> <pong> <epoch> <link> <slot ranges...>`; slot
/// fields in brackets are migrations in progress, not ownership.
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = f[1].split('@').next()?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|x| (x, x)),
        })
        .collect();
    Some(NodeLine {
        id: f[0].to_string(),
        port,
        flags: f[2].split(',').map(str::to_string).collect(),
        master_id: (f[3] != "-").then(|| f[3].to_string()),
        slots,
    })
}
