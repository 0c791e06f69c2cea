//! Embedded PostgreSQL launcher.
//!
//! When the `marketplace` binary runs without `DATABASE_URL`, it keeps its data
//! in a private PostgreSQL cluster that it starts itself from the locally
//! installed server binaries (`initdb`, `postgres`). Tests use the same
//! launcher to get a throwaway cluster (see [`EmbeddedPostgres::start_ephemeral`]).
//!
//! Design notes:
//!
//! * **Binaries** are discovered on `PATH`, via `pg_config --bindir`, or in the
//!   newest `/usr/lib/postgresql/*/bin` ([`PgBinaries::discover`]).
//! * **Root**: `initdb` and `postgres` refuse to run as root, so when the
//!   effective uid is 0 they run as the `postgres` OS user, and every directory
//!   they need is chowned to it. If that user cannot reach the requested
//!   directory (e.g. it lives under `/root`), the cluster is placed under
//!   `/var/tmp/marketplace-<hash>/` instead.
//! * **Lifetime**: postgres runs under a tiny `sh` supervisor whose stdin is a
//!   pipe held open by this process. When this process exits, for whatever
//!   reason (including `SIGKILL`), the pipe closes, the supervisor's `read`
//!   returns and it sends `SIGINT` (fast shutdown) to postgres and waits for
//!   it. So a cluster started here never outlives the process that started it.
//!   The supervisor lives in its own process group, so a terminal `Ctrl-C`
//!   reaches only the application, which can then shut down in order.
//! * **Reuse**: if a postmaster is already serving the data directory (for
//!   example another `marketplace` process), it is reused and left running.
//! * **WAL made ahead**: a served cluster keeps `min_wal_size` of WAL
//!   segments for reuse, and a start that finds fewer makes the rest at
//!   once, before it returns, rather than letting a commit wait while one
//!   is made (see `MIN_WAL_SIZE`). A new cluster pays the most: about
//!   two seconds for 512 MB on the machine of BENCHMARKS.md.
//! * **Crashes, on purpose**: a cluster this process started can be stopped
//!   in immediate mode (`SIGQUIT`: no shutdown checkpoint, so the next start
//!   runs crash recovery) and started again on the same port and data
//!   ([`EmbeddedPostgres::crash_and_restart`]), for tests of what the
//!   application does when its database goes away under load.
//! * **Standbys**: [`EmbeddedPostgres::start_standby`] clones a running
//!   cluster with `pg_basebackup -R` (streaming the WAL, so the clone is
//!   consistent) into a fresh ephemeral directory and starts it as a hot
//!   standby on its own port, replicating the whole cluster. The primary
//!   needs nothing beyond `initdb`'s defaults: `wal_level=replica` and
//!   `max_wal_senders` (both also set explicitly below), and the
//!   `host replication all 127.0.0.1/32 trust` line `initdb -A trust`
//!   writes into `pg_hba.conf`. [`pause_replay`](EmbeddedPostgres::pause_replay)
//!   and [`resume_replay`](EmbeddedPostgres::resume_replay) make a standby
//!   lag on purpose: it keeps receiving WAL but applies none of it.
//!
//! Everything here uses `std::process` for the long-lived supervisor so that it
//! is not tied to the tokio runtime that happened to start it.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

/// How long a freshly started (or starting) postmaster gets to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound for a single connection attempt while probing.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`EmbeddedPostgres::stop`] waits for postgres to finish a fast shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`EmbeddedPostgres::stop_immediate`] waits for postgres to exit.
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a start is retried when the chosen port turned out to be taken.
const START_ATTEMPTS: usize = 4;
/// `postgres.log` is rotated to `postgres.log.1` at start once it exceeds this size.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Unix-domain socket paths must fit in `sockaddr_un.sun_path` (108 bytes incl. NUL).
const MAX_SOCKET_PATH: usize = 100;
/// WAL a served cluster keeps for reuse (`min_wal_size`; initdb's default
/// is 80 MB). A checkpoint recycles old segments into future ones up to
/// this much, rather than removing them: otherwise a burst of orders past
/// the recycled ones makes a new segment, and the commit that needs it
/// waits while 16 MB of zeroes are written and flushed, and a removed
/// segment's blocks are discarded on file systems mounted with `discard`.
/// It costs this much disk once the log has written that much.
const MIN_WAL_SIZE: &str = "512MB";
/// The WAL segments in `pg_wal`, and how many [`MIN_WAL_SIZE`] keeps.
const WAL_SEGMENTS_MADE_AND_WANTED: &str = "SELECT \
       (SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'), \
       pg_size_bytes(current_setting('min_wal_size')) \
         / pg_size_bytes(current_setting('wal_segment_size'))";
/// Prefix of the directories created by [`EmbeddedPostgres::start_ephemeral`].
const EPHEMERAL_PREFIX: &str = "marketplace-pg-";
/// The database role created by `initdb -U` and used for every connection.
const SUPERUSER: &str = "postgres";

/// Supervisor run as `sh -c SCRIPT marketplace-pg-supervisor CLEANUP_DIR POSTGRES ARGS...`.
///
/// It starts postgres in the background (stdin from /dev/null, output to the
/// supervisor's stderr, which is `postgres.log`), reports postgres's pid on
/// stdout, then blocks reading its own stdin: a pipe whose write end only our
/// process holds. Once that pipe closes (explicit stop or our death), it asks
/// postgres for a fast shutdown, waits for it, and optionally deletes the
/// cluster directory (ephemeral clusters).
const SUPERVISOR_SCRIPT: &str = r#"cleanup=$1
shift
"$@" </dev/null >&2 &
pid=$!
echo "$pid"
exec >&2
read -r line || :
kill -INT "$pid" 2>/dev/null
wait "$pid"
status=$?
if [ -n "$cleanup" ]; then rm -rf -- "$cleanup"; fi
exit "$status"
"#;

/// Names the one directory to take the PostgreSQL server binaries from,
/// overriding the search.
pub const BINDIR_ENV: &str = "MARKETPLACE_PG_BINDIR";

/// Errors raised while locating, starting, using or stopping an embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory containing both `initdb` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, via `pg_config --bindir`, \
         or in /usr/lib/postgresql/*/bin. Install them with `apt-get install postgresql` \
         (Debian/Ubuntu; any version ≥ 14, e.g. postgresql-15), or set DATABASE_URL to an existing \
         PostgreSQL server."
    )]
    BinariesNotFound {
        /// Every directory that was inspected, in search order.
        searched: Vec<PathBuf>,
    },
    /// Running as root, but there is no unprivileged `postgres` OS user to run the server as.
    #[error(
        "running as root, but there is no `postgres` OS user in /etc/passwd to run PostgreSQL as \
         (initdb and postgres refuse to run as root). Create one (installing the `postgresql` \
         package does), run as a non-root user, or set DATABASE_URL to an existing PostgreSQL server."
    )]
    NoPostgresUser,
    /// A file-system or process operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being attempted, e.g. "create directory".
        action: &'static str,
        /// The file, directory or program involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `initdb` exited unsuccessfully.
    #[error("initdb failed for {} ({status}):\n{output}", data_dir.display())]
    InitDb {
        /// The data directory being initialised.
        data_dir: PathBuf,
        /// initdb's exit status.
        status: ExitStatus,
        /// initdb's combined stdout and stderr.
        output: String,
    },
    /// The server did not come up.
    #[error("embedded PostgreSQL in {} failed to start: {reason}\n--- last lines of {} ---\n{log_tail}", data_dir.display(), log.display())]
    StartFailed {
        /// The data directory of the cluster.
        data_dir: PathBuf,
        /// Why the start is considered failed.
        reason: String,
        /// Path of the server log.
        log: PathBuf,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// The server did not shut down in time, or its supervisor could not be awaited.
    #[error("embedded PostgreSQL in {} did not stop cleanly: {reason}", data_dir.display())]
    StopFailed {
        /// The data directory of the cluster.
        data_dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A SQL operation against the cluster failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being attempted.
        context: String,
        /// The underlying driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A database name that cannot be used (empty or longer than 63 bytes).
    #[error("invalid database name {0:?}: it must be 1 to 63 bytes long")]
    InvalidDatabaseName(String),
    /// The cluster was already running when this handle found it
    /// ([`ClusterLifetime::Reused`]): another process owns it, so this handle
    /// neither crashes nor restarts it.
    #[error("the PostgreSQL cluster in {} belongs to another process; this handle cannot {action} it", data_dir.display())]
    NotOwned {
        /// The data directory of the cluster.
        data_dir: PathBuf,
        /// What was refused, e.g. "stop in immediate mode".
        action: &'static str,
    },
}

/// Shorthand for `Result<T, EmbeddedError>`.
type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.into();
    move |source| EmbeddedError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------
// Binary discovery
// ---------------------------------------------------------------------------

/// Location of the PostgreSQL server binaries (`initdb`, `postgres`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Directory containing both `initdb` and `postgres`.
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the server binaries: `MARKETPLACE_PG_BINDIR` when set (and then
    /// only there), else first a `PATH` entry holding both `initdb` and
    /// `postgres`, then `pg_config --bindir`, then the highest-version
    /// `/usr/lib/postgresql/*/bin`.
    pub fn discover() -> Result<PgBinaries> {
        let mut searched = Vec::new();

        if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            return Self::check_dir(&dir).ok_or(EmbeddedError::BinariesNotFound {
                searched: vec![dir],
            });
        }

        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.as_os_str().is_empty() {
                    continue;
                }
                if let Some(found) = Self::check_dir(&dir) {
                    return Ok(found);
                }
                searched.push(dir);
            }
        }

        if let Some(dir) = pg_config_bindir() {
            if let Some(found) = Self::check_dir(&dir) {
                return Ok(found);
            }
            searched.push(dir);
        }

        for dir in versioned_lib_dirs(Path::new("/usr/lib/postgresql")) {
            if let Some(found) = Self::check_dir(&dir) {
                return Ok(found);
            }
            searched.push(dir);
        }

        Err(EmbeddedError::BinariesNotFound { searched })
    }

    /// Returns the binaries in `dir` if it holds both programs. Symlinked
    /// binaries (e.g. `/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres`)
    /// are resolved to their real directory when that directory is complete.
    fn check_dir(dir: &Path) -> Option<PgBinaries> {
        if !(is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))) {
            return None;
        }
        let resolved = fs::canonicalize(dir.join("postgres"))
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
            .filter(|real| {
                is_executable(&real.join("initdb")) && is_executable(&real.join("postgres"))
            });
        Some(PgBinaries {
            bindir: resolved.unwrap_or_else(|| dir.to_path_buf()),
        })
    }

    /// Path of the `initdb` program.
    pub fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    /// Path of the `postgres` server program.
    pub fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }

    /// Path of the `pg_basebackup` program (what a standby is cloned with).
    pub fn pg_basebackup(&self) -> PathBuf {
        self.bindir.join("pg_basebackup")
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/<version>/bin` for every version directory under `root`, newest first.
fn versioned_lib_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

// ---------------------------------------------------------------------------
// OS user handling
// ---------------------------------------------------------------------------

/// The unprivileged OS identity postgres runs as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// `None` when we are not root (run postgres as ourselves), otherwise the `postgres` user.
fn run_as_user() -> Result<Option<OsUser>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read", "/etc/passwd"))?;
    lookup_user(&passwd, "postgres")
        .map(Some)
        .ok_or(EmbeddedError::NoPostgresUser)
}

fn lookup_user(passwd: &str, name: &str) -> Option<OsUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser { uid, gid })
    })
}

fn effective_uid() -> Result<u32> {
    // Linux: the second field of the `Uid:` line is the effective uid.
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse().ok());
        if let Some(euid) = euid {
            return Ok(euid);
        }
    }
    let output = std::process::Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("run", "id -u"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| EmbeddedError::Io {
            action: "determine the effective uid with",
            path: PathBuf::from("id -u"),
            source: io::Error::other("unexpected output"),
        })
}

/// Whether `user` may traverse (search) `path` and all of its ancestors.
/// Only the primary group is considered, which errs on the safe side.
fn user_can_reach(path: &Path, user: OsUser) -> bool {
    path.ancestors().all(|dir| {
        let Ok(meta) = fs::metadata(dir) else {
            return false;
        };
        let mode = meta.mode();
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    })
}

/// Creates `path` (and parents) with `mode` for the leaf and hands it to `owner`.
fn create_owned_dir(path: &Path, mode: u32, owner: Option<OsUser>) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("create directory", path))?;
    chown_to(path, owner)
}

fn chown_to(path: &Path, owner: Option<OsUser>) -> Result<()> {
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(io_err("change the owner of", path))?;
    }
    Ok(())
}

/// FNV-1a: a tiny hash that, unlike `DefaultHasher`, is stable across Rust releases.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// Whether `pid` names a live (non-zombie) process. `None` when it cannot be told
/// (no `/proc`).
fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Some(false);
    };
    // Format: `pid (comm) state ...`; comm may contain spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    Some(!matches!(state, Some("Z") | Some("X") | Some("x")))
}

/// Whether `pid` is a live process running the `postgres` program.
fn is_live_postgres(pid: u32) -> bool {
    match process_alive(pid) {
        Some(true) => fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|comm| comm.trim() == "postgres")
            .unwrap_or(true),
        Some(false) => false,
        // Without /proc we cannot tell; assume it might be running.
        None => true,
    }
}

/// An ephemeral port on 127.0.0.1 that is free right now.
fn pick_free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("bind a TCP port on", "127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("read the address of a TCP listener on", "127.0.0.1"))?
        .port();
    Ok(port)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn connect_options(port: u16, database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
        .disable_statement_logging()
}

/// Connects once to the server on `port` and returns its `data_directory`.
async fn probe(port: u16) -> std::result::Result<String, String> {
    let options = connect_options(port, "postgres");
    let mut conn = match tokio::time::timeout(PROBE_CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err("connection attempt timed out".to_owned()),
    };
    let data_dir: std::result::Result<String, sqlx::Error> =
        sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&mut conn)
            .await;
    let _ = conn.close().await;
    data_dir.map_err(|err| err.to_string())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// The last `lines` lines of the log, starting no earlier than byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log file)".to_owned();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(16 * 1024)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return "(log file unreadable)".to_owned();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".to_owned()
    } else {
        tail
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `name` as one segment of a URL path: unreserved characters as they are,
/// every other byte `%XX`.
pub(crate) fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The cluster handle
// ---------------------------------------------------------------------------

/// Who owns a running cluster, and therefore what [`EmbeddedPostgres::stop`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterLifetime {
    /// Started by this handle on persistent data ([`EmbeddedPostgres::start_or_reuse`]);
    /// `stop()` shuts it down (fast shutdown) and keeps the data.
    Owned,
    /// Started by this handle in a fresh temporary directory
    /// ([`EmbeddedPostgres::start_ephemeral`]); `stop()` shuts it down and deletes the directory.
    Ephemeral,
    /// Already running when we looked (started by another process); `stop()` leaves it running.
    Reused,
}

/// The supervisor process that ties postgres's lifetime to ours.
#[derive(Debug)]
struct Supervisor {
    child: Child,
    /// Write end of the supervisor's stdin; closing it shuts postgres down.
    stdin: Option<ChildStdin>,
    /// Pid of the postmaster itself, as reported by the supervisor.
    postgres_pid: Option<u32>,
}

impl Supervisor {
    /// Asks for a fast shutdown and waits (without blocking the runtime) for completion.
    async fn shutdown(mut self, timeout: Duration) -> std::result::Result<ExitStatus, String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!(
                        "postgres (pid {}) was still running {} s after the shutdown request",
                        self.postgres_pid
                            .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                        timeout.as_secs()
                    ))
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(err) => return Err(format!("could not wait for the supervisor: {err}")),
            }
        }
    }

    /// Stops postgres in immediate mode, as a crash would (`SIGQUIT`: every
    /// backend quits at once, nothing is checkpointed), waits until it has
    /// exited, then discards the supervisor without its cleanup step: the
    /// data directory is needed for the restart.
    async fn stop_immediate(
        self,
        data_dir: &Path,
        port: u16,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        // The pid file is the fallback for a supervisor whose report was lost.
        let pid = self.postgres_pid.or_else(|| {
            fs::read_to_string(data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|c| c.lines().next().and_then(|l| l.trim().parse().ok()))
        });
        let Some(pid) = pid else {
            self.discard();
            return Err("the postmaster's pid is unknown".to_owned());
        };
        // `kill` from the shell the supervisor runs in already: no libc, no unsafe.
        let sent = std::process::Command::new("/bin/sh")
            .args(["-c", "kill -QUIT \"$1\"", "marketplace-pg-crash"])
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !sent.is_ok_and(|status| status.success()) && process_alive(pid) == Some(true) {
            self.discard();
            return Err(format!("could not send SIGQUIT to postgres (pid {pid})"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            // A zombie (not yet reaped by the supervisor) has released its
            // port and its children; without /proc the port tells.
            let gone = match process_alive(pid) {
                Some(alive) => !alive,
                None => port_is_free(port),
            };
            if gone {
                break;
            }
            if Instant::now() >= deadline {
                self.discard();
                return Err(format!(
                    "postgres (pid {pid}) was still running {} s after SIGQUIT",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.discard();
        Ok(())
    }

    /// Gets rid of a supervisor whose postgres already exited, without running
    /// its cleanup step (the directory is still needed for a retry).
    fn discard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// File-system layout of one cluster.
#[derive(Debug, Clone)]
struct ClusterPaths {
    /// Directory holding everything below.
    root: PathBuf,
    /// `<root>/pgdata`.
    data: PathBuf,
    /// `<root>/socket`: the unix-socket directory.
    socket: PathBuf,
    /// `<root>/postgres.log`.
    log: PathBuf,
    /// `<root>/port`: the port remembered across restarts.
    port_file: PathBuf,
}

impl ClusterPaths {
    fn new(root: PathBuf) -> ClusterPaths {
        ClusterPaths {
            data: root.join("pgdata"),
            socket: root.join("socket"),
            log: root.join("postgres.log"),
            port_file: root.join("port"),
            root,
        }
    }
}

/// What to start and how.
#[derive(Debug)]
struct Launch<'a> {
    binaries: &'a PgBinaries,
    paths: &'a ClusterPaths,
    run_as: Option<OsUser>,
    /// Dev/test tuning: trade durability for speed.
    ephemeral: bool,
}

/// Outcome of one start attempt that did not produce a ready server.
#[derive(Debug)]
enum AttemptError {
    /// postgres exited; `log` is what it wrote during this attempt.
    Exited { log: String },
    /// A hard error (spawn failure, timeout, ...).
    Fatal(EmbeddedError),
}

/// A running PostgreSQL cluster that this process started, or reused.
///
/// Dropping the handle without calling [`stop`](Self::stop) also shuts an
/// owned cluster down (the supervisor's pipe closes), but without waiting for it.
///
/// The handle is `Sync`: a test may share it (say, in an `Arc`) with the
/// task that crashes the server while others use it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    port: u16,
    paths: ClusterPaths,
    lifetime: ClusterLifetime,
    /// How the server was started, to start it again; `None` when reused.
    relaunch: Option<Relaunch>,
    /// The running server's supervisor: `None` when reused, or while an
    /// owned server is down between [`stop_immediate`](Self::stop_immediate)
    /// and [`start_again`](Self::start_again). Locked across a crash or a
    /// restart so that two of them never interleave.
    supervisor: tokio::sync::Mutex<Option<Supervisor>>,
    /// For a standby ([`start_standby`](Self::start_standby)): the primary
    /// and the replication slot it holds there, dropped by [`stop`](Self::stop).
    upstream: Option<Upstream>,
}

/// Where a standby replicates from.
#[derive(Debug, Clone)]
struct Upstream {
    primary: String,
    slot: String,
}

/// What an owned cluster was started with, kept to start it again.
#[derive(Debug)]
struct Relaunch {
    binaries: PgBinaries,
    run_as: Option<OsUser>,
}

impl EmbeddedPostgres {
    /// Starts (or reuses, if one is already running there) a private cluster
    /// whose data lives under `dir` (e.g. `./.marketplace`), in `dir/pgdata`.
    ///
    /// When running as root and the `postgres` OS user cannot reach `dir`, the
    /// cluster lives in `/var/tmp/marketplace-<hash of dir>/` instead (logged).
    pub async fn start_or_reuse(dir: &Path) -> Result<EmbeddedPostgres> {
        let binaries = PgBinaries::discover()?;
        let run_as = run_as_user()?;

        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let root = match run_as {
            Some(user) if !user_can_reach(&dir, user) => {
                let hash = stable_hash(dir.as_os_str().as_encoded_bytes());
                let fallback = PathBuf::from(format!(
                    "/var/tmp/marketplace-{:012x}",
                    hash & 0xffff_ffff_ffff
                ));
                tracing::info!(
                    requested = %dir.display(),
                    cluster = %fallback.display(),
                    "running as root and the `postgres` OS user (uid {}) cannot reach the requested \
                     directory, so the embedded PostgreSQL cluster lives in {} instead",
                    user.uid,
                    fallback.display(),
                );
                create_owned_dir(&fallback, 0o755, None)?;
                fallback
            }
            _ => dir,
        };
        let paths = ClusterPaths::new(root);

        // A second pass is only needed when another process won a start race.
        for _ in 0..2 {
            if let Some(reused) = Self::try_reuse(&paths).await? {
                return Ok(reused);
            }
            prepare_cluster_dirs(&paths, run_as)?;
            if !paths.data.join("PG_VERSION").exists() {
                run_initdb(&binaries, &paths, run_as, false).await?;
            }
            let launch = Launch {
                binaries: &binaries,
                paths: &paths,
                run_as,
                ephemeral: false,
            };
            match launch_with_retries(&launch, None).await {
                Ok(started) => {
                    if let Err(err) = started.preallocate_wal().await {
                        tracing::warn!(
                            "could not make the cluster's reusable WAL segments ahead \
                             (commits make them as they go): {err}"
                        );
                    }
                    return Ok(started);
                }
                Err(LaunchError::LockedByOther) => continue,
                Err(LaunchError::Failed(err)) => return Err(err),
            }
        }
        Self::try_reuse(&paths)
            .await?
            .ok_or_else(|| EmbeddedError::StartFailed {
                data_dir: paths.data.clone(),
                reason:
                    "another postmaster holds the data directory but does not accept connections"
                        .to_owned(),
                log: paths.log.clone(),
                log_tail: log_tail(&paths.log, 0, 20),
            })
    }

    /// Starts a throwaway cluster in a fresh directory under the system temp
    /// directory, tuned for speed (`fsync=off`, ...) yet keeping acknowledged
    /// commits across a server crash. The directory is deleted
    /// when the cluster stops, including when this process dies without
    /// calling [`stop`](Self::stop) (the supervisor deletes it).
    pub async fn start_ephemeral() -> Result<EmbeddedPostgres> {
        let binaries = PgBinaries::discover()?;
        let run_as = run_as_user()?;

        let base = ephemeral_base(run_as);
        sweep_stale_ephemeral(&base);
        let root = base.join(format!(
            "{EPHEMERAL_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        create_owned_dir(&root, 0o755, run_as)?;
        let paths = ClusterPaths::new(root);

        let result = async {
            prepare_cluster_dirs(&paths, run_as)?;
            run_initdb(&binaries, &paths, run_as, true).await?;
            let launch = Launch {
                binaries: &binaries,
                paths: &paths,
                run_as,
                ephemeral: true,
            };
            match launch_with_retries(&launch, Some(&paths.root)).await {
                Ok(started) => Ok(started),
                Err(LaunchError::Failed(err)) => Err(err),
                Err(LaunchError::LockedByOther) => Err(EmbeddedError::StartFailed {
                    data_dir: paths.data.clone(),
                    reason: "the fresh data directory is locked by another postmaster".to_owned(),
                    log: paths.log.clone(),
                    log_tail: log_tail(&paths.log, 0, 20),
                }),
            }
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_dir_all(&paths.root);
        }
        result
    }

    /// Clones the cluster `primary` names (a `postgres://` URL of a role
    /// allowed to replicate) with `pg_basebackup -R -X stream` into a fresh
    /// ephemeral directory, and starts the copy as a hot standby on its own
    /// free port: it streams the primary's WAL from then on and accepts
    /// read-only connections. Like [`start_ephemeral`](Self::start_ephemeral),
    /// it is tuned for speed and its directory goes when it stops (or this
    /// process dies).
    ///
    /// The standby holds a physical replication slot on the primary,
    /// created (reserving WAL) before the backup starts, so no WAL it still needs is
    /// recycled (neither during the backup, however busy the primary, nor
    /// while it is paused or slow). [`stop`](Self::stop) drops the slot;
    /// a standby dropped without `stop` leaves it, and the primary keeps
    /// WAL for it until it is dropped (`pg_drop_replication_slot`) or the
    /// primary goes away.
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::StartFailed`] if the base backup fails (its log tail
    /// is `pg_basebackup`'s output) or the standby does not come up.
    pub async fn start_standby(primary: &str) -> Result<EmbeddedPostgres> {
        let binaries = PgBinaries::discover()?;
        let run_as = run_as_user()?;

        let base = ephemeral_base(run_as);
        let root = base.join(format!(
            "{EPHEMERAL_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        create_owned_dir(&root, 0o755, run_as)?;
        let paths = ClusterPaths::new(root);

        let slot = format!("marketplace_standby_{:08x}", rand::random::<u32>());
        let result = async {
            prepare_cluster_dirs(&paths, run_as)?;
            create_slot(primary, &slot).await?;
            run_basebackup(&binaries, &paths, run_as, primary, &slot).await?;
            let launch = Launch {
                binaries: &binaries,
                paths: &paths,
                run_as,
                ephemeral: true,
            };
            match launch_with_retries(&launch, Some(&paths.root)).await {
                Ok(started) => Ok(EmbeddedPostgres {
                    upstream: Some(Upstream {
                        primary: primary.to_owned(),
                        slot: slot.clone(),
                    }),
                    ..started
                }),
                Err(LaunchError::Failed(err)) => Err(err),
                Err(LaunchError::LockedByOther) => Err(EmbeddedError::StartFailed {
                    data_dir: paths.data.clone(),
                    reason: "the fresh standby directory is locked by another postmaster"
                        .to_owned(),
                    log: paths.log.clone(),
                    log_tail: log_tail(&paths.log, 0, 20),
                }),
            }
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_dir_all(&paths.root);
            drop_slot(primary, &slot).await;
        }
        result
    }

    /// On a hot standby: stops applying WAL (`pg_wal_replay_pause()`). It
    /// keeps receiving and storing the primary's WAL, so it lags by
    /// exactly what is written from now on: it returns once replay has
    /// stopped (`pg_get_wal_replay_pause_state()` is `paused`), and nothing
    /// is applied after that before [`resume_replay`](Self::resume_replay).
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::Sql`] if the server is not a standby or is down.
    pub async fn pause_replay(&self) -> Result<()> {
        self.admin_statement("SELECT pg_wal_replay_pause()", "pause WAL replay")
            .await?;
        // The request takes effect between two records: wait until the
        // startup process says it has stopped, so that the replay location
        // holds still from here on.
        let mut conn = self.admin_connection().await?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut conn)
                .await
                .map_err(|source| EmbeddedError::Sql {
                    context: "could not read the replay pause state".to_owned(),
                    source,
                })?;
            if state == "paused" || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// On a hot standby: applies WAL again (`pg_wal_replay_resume()`), and
    /// so catches up with the primary.
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::Sql`] if the server is not a standby or is down.
    pub async fn resume_replay(&self) -> Result<()> {
        self.admin_statement("SELECT pg_wal_replay_resume()", "resume WAL replay")
            .await
    }

    /// On a hot standby: the WAL location it has applied up to
    /// (`pg_last_wal_replay_lsn()`, as a byte offset); `None` on a primary.
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::Sql`] if the server is down.
    pub async fn replay_lsn(&self) -> Result<Option<u64>> {
        let mut conn = self.admin_connection().await?;
        let lsn: Option<i64> =
            sqlx::query_scalar("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8")
                .fetch_one(&mut conn)
                .await
                .map_err(|source| EmbeddedError::Sql {
                    context: "could not read the replay location".to_owned(),
                    source,
                })?;
        let _ = conn.close().await;
        Ok(lsn.and_then(|l| u64::try_from(l).ok()))
    }

    async fn admin_connection(&self) -> Result<sqlx::PgConnection> {
        connect_options(self.port, "postgres")
            .connect()
            .await
            .map_err(|source| EmbeddedError::Sql {
                context: format!("could not connect to {}", self.admin_url()),
                source,
            })
    }

    async fn admin_statement(&self, sql: &str, what: &str) -> Result<()> {
        let mut conn = self.admin_connection().await?;
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .map_err(|source| EmbeddedError::Sql {
                context: format!("could not {what} on port {}", self.port),
                source,
            })?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Makes the WAL segments a served cluster keeps for reuse
    /// ([`MIN_WAL_SIZE`]) now, where fewer exist (a new cluster has one or
    /// two). A segment is otherwise made the first time the log reaches it,
    /// while the commit that needs it waits for 16 MB of zeroes to be
    /// written and flushed: a new install's first burst of orders paid for
    /// it in its p99 (BENCHMARKS.md). Each segment is reached by a WAL
    /// switch after a one-record message, and a checkpoint then recycles
    /// the passed ones into future segments. A new cluster pays the most
    /// (about 2 s for 512 MB here). Checkpoints remove segments again past
    /// what recent ones needed, so a later start tops up what is missing
    /// (0.1-0.3 s after a bench run); one that finds them all runs one query.
    async fn preallocate_wal(&self) -> Result<()> {
        let sql_err = |context: &str| {
            let context = format!("{context} on port {}", self.port);
            move |source| EmbeddedError::Sql { context, source }
        };
        let mut conn = self.admin_connection().await?;
        let (made, wanted): (i64, i64) = sqlx::query_as(WAL_SEGMENTS_MADE_AND_WANTED)
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err("could not count the WAL segments"))?;
        if made >= wanted {
            let _ = conn.close().await;
            return Ok(());
        }
        let began = Instant::now();
        tracing::info!(
            made,
            wanted,
            "making the cluster's reusable WAL segments ({MIN_WAL_SIZE} in all) once, \
             so that no commit waits while one is made"
        );
        for _ in made..wanted {
            sqlx::query(
                "SELECT pg_logical_emit_message(false, 'marketplace.wal-preallocation', ''), \
                        pg_switch_wal()",
            )
            .execute(&mut conn)
            .await
            .map_err(sql_err("could not switch to a new WAL segment"))?;
        }
        sqlx::query("CHECKPOINT")
            .execute(&mut conn)
            .await
            .map_err(sql_err("could not recycle the WAL segments"))?;
        let (made, _): (i64, i64) = sqlx::query_as(WAL_SEGMENTS_MADE_AND_WANTED)
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err("could not count the WAL segments"))?;
        let _ = conn.close().await;
        tracing::info!(
            made,
            took_ms = began.elapsed().as_millis() as u64,
            "the cluster's reusable WAL segments are made"
        );
        Ok(())
    }

    /// Reuses a postmaster already serving `paths.data`, if there is one.
    async fn try_reuse(paths: &ClusterPaths) -> Result<Option<EmbeddedPostgres>> {
        let pid_file = paths.data.join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(&pid_file) else {
            return Ok(None);
        };
        let mut lines = contents.lines();
        let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
        let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
        let (Some(pid), Some(port)) = (pid, port) else {
            // Being written right now, or garbage; postgres sorts stale files out itself.
            return Ok(None);
        };
        if !is_live_postgres(pid) {
            tracing::debug!(
                pid,
                "stale postmaster.pid in {}; starting afresh",
                paths.data.display()
            );
            return Ok(None);
        }

        // The postmaster may still be starting (or recovering): give it time.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match probe(port).await {
                Ok(data_dir) if same_dir(Path::new(&data_dir), &paths.data) => {
                    tracing::info!(
                        port,
                        pid,
                        "reusing the PostgreSQL cluster already running for {}",
                        paths.data.display()
                    );
                    return Ok(Some(EmbeddedPostgres {
                        port,
                        paths: paths.clone(),
                        lifetime: ClusterLifetime::Reused,
                        relaunch: None,
                        supervisor: tokio::sync::Mutex::new(None),
                        upstream: None,
                    }));
                }
                Ok(other) => {
                    return Err(EmbeddedError::StartFailed {
                        data_dir: paths.data.clone(),
                        reason: format!(
                            "postmaster.pid says pid {pid} serves it on port {port}, but that port \
                             is served by a cluster in {other}"
                        ),
                        log: paths.log.clone(),
                        log_tail: log_tail(&paths.log, 0, 20),
                    })
                }
                Err(_) if !is_live_postgres(pid) => return Ok(None),
                Err(err) if Instant::now() >= deadline => {
                    return Err(EmbeddedError::StartFailed {
                        data_dir: paths.data.clone(),
                        reason: format!(
                            "a postmaster (pid {pid}) is running for this data directory but port \
                             {port} did not accept connections within {} s: {err}",
                            STARTUP_TIMEOUT.as_secs()
                        ),
                        log: paths.log.clone(),
                        log_tail: log_tail(&paths.log, 0, 20),
                    })
                }
                Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }

    /// Admin connection URL to the `postgres` database,
    /// e.g. `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn admin_url(&self) -> String {
        self.database_url("postgres")
    }

    /// URL of database `name` on this cluster (the superuser, over TCP on 127.0.0.1).
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(name)
        )
    }

    /// Creates database `name` if it does not exist.
    pub async fn ensure_database(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.len() > 63 {
            return Err(EmbeddedError::InvalidDatabaseName(name.to_owned()));
        }
        let sql_err = |context: String| move |source| EmbeddedError::Sql { context, source };
        let mut conn = connect_options(self.port, "postgres")
            .connect()
            .await
            .map_err(sql_err(format!(
                "could not connect to {}",
                self.admin_url()
            )))?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await
                .map_err(sql_err(format!("could not look up database {name:?}")))?;
        if exists.is_none() {
            let created = sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
                .execute(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(database = name, "created database"),
                // Someone else created it in the meantime: fine.
                Err(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("42P04")
                        || db.code().as_deref() == Some("23505") => {}
                Err(source) => {
                    return Err(EmbeddedError::Sql {
                        context: format!("could not create database {name:?}"),
                        source,
                    })
                }
            }
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the cluster if this handle started it (fast shutdown), waiting for
    /// it to exit; an ephemeral cluster's directory is deleted too, even when
    /// the server was already down after [`stop_immediate`](Self::stop_immediate).
    /// Reused clusters are left running.
    pub async fn stop(mut self) -> Result<()> {
        let outcome = match self.supervisor.get_mut().take() {
            Some(supervisor) => supervisor.shutdown(SHUTDOWN_TIMEOUT).await.map(Some),
            None => Ok(None),
        };
        if let Some(upstream) = self.upstream.take() {
            drop_slot(&upstream.primary, &upstream.slot).await;
        }
        if self.lifetime == ClusterLifetime::Ephemeral {
            // The supervisor normally removed it already; this is the fallback.
            if let Err(err) = fs::remove_dir_all(&self.paths.root) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("could not remove {}: {err}", self.paths.root.display());
                }
            }
        }
        match outcome {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                tracing::info!(port = self.port, %status, "embedded PostgreSQL stopped");
                Ok(())
            }
            Err(reason) => Err(EmbeddedError::StopFailed {
                data_dir: self.paths.data.clone(),
                reason,
            }),
        }
    }

    /// Stops the server in immediate mode, as a crash would: every
    /// connection is cut at once, nothing is checkpointed, and the next
    /// start runs crash recovery. Returns once postgres has exited and its
    /// port is released; the data directory (an ephemeral one included)
    /// stays for [`start_again`](Self::start_again). Does nothing if the
    /// server is already down.
    ///
    /// Meant for tests of recovery: crash a cluster of the test's own
    /// ([`start_ephemeral`](Self::start_ephemeral)), never the shared test
    /// cluster other tests run on.
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::NotOwned`] for a reused cluster;
    /// [`EmbeddedError::StopFailed`] if postgres did not exit in time.
    pub async fn stop_immediate(&self) -> Result<()> {
        self.owned("stop in immediate mode")?;
        let mut running = self.supervisor.lock().await;
        let Some(supervisor) = running.take() else {
            return Ok(());
        };
        supervisor
            .stop_immediate(&self.paths.data, self.port, IMMEDIATE_STOP_TIMEOUT)
            .await
            .map_err(|reason| EmbeddedError::StopFailed {
                data_dir: self.paths.data.clone(),
                reason,
            })?;
        tracing::info!(
            port = self.port,
            "embedded PostgreSQL stopped in immediate mode"
        );
        Ok(())
    }

    /// Starts the server again after [`stop_immediate`](Self::stop_immediate),
    /// on the same port and data directory, with the same settings; returns
    /// once crash recovery is over and it accepts connections. URLs taken
    /// from this handle before stay valid. Does nothing if the server is
    /// running.
    ///
    /// # Errors
    ///
    /// [`EmbeddedError::NotOwned`] for a reused cluster;
    /// [`EmbeddedError::StartFailed`] if postgres does not come up (the port
    /// was taken meanwhile, say); a later call may try again.
    pub async fn start_again(&self) -> Result<()> {
        let relaunch = self.owned("start again")?;
        let mut running = self.supervisor.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let ephemeral = self.lifetime == ClusterLifetime::Ephemeral;
        let launch = Launch {
            binaries: &relaunch.binaries,
            paths: &self.paths,
            run_as: relaunch.run_as,
            ephemeral,
        };
        let cleanup = ephemeral.then_some(self.paths.root.as_path());
        match start_once(&launch, self.port, cleanup).await {
            Ok(supervisor) => {
                *running = Some(supervisor);
                tracing::info!(port = self.port, "embedded PostgreSQL started again");
                Ok(())
            }
            Err(AttemptError::Fatal(err)) => Err(err),
            Err(AttemptError::Exited { log }) => Err(EmbeddedError::StartFailed {
                data_dir: self.paths.data.clone(),
                reason: format!("postgres exited while starting again on port {}", self.port),
                log: self.paths.log.clone(),
                log_tail: last_lines(&log, 30),
            }),
        }
    }

    /// [`stop_immediate`](Self::stop_immediate), then
    /// [`start_again`](Self::start_again): the server crashes and comes
    /// back on the same port with its committed data.
    pub async fn crash_and_restart(&self) -> Result<()> {
        self.stop_immediate().await?;
        self.start_again().await
    }

    /// How to start this cluster again, if this handle owns it.
    fn owned(&self, action: &'static str) -> Result<&Relaunch> {
        self.relaunch
            .as_ref()
            .ok_or_else(|| EmbeddedError::NotOwned {
                data_dir: self.paths.data.clone(),
                action,
            })
    }

    /// For a standby, the replication slot it holds on its primary.
    pub fn replication_slot(&self) -> Option<&str> {
        self.upstream.as_ref().map(|u| u.slot.as_str())
    }

    /// TCP port the cluster listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`<cluster dir>/pgdata`).
    pub fn data_dir(&self) -> &Path {
        &self.paths.data
    }

    /// Directory holding the data directory, the log and the remembered port.
    pub fn cluster_dir(&self) -> &Path {
        &self.paths.root
    }

    /// Path of the server log (`<cluster dir>/postgres.log`).
    pub fn log_file(&self) -> &Path {
        &self.paths.log
    }

    /// Whether this handle owns the server, and so what [`stop`](Self::stop) does.
    pub fn lifetime(&self) -> ClusterLifetime {
        self.lifetime
    }
}

// ---------------------------------------------------------------------------
// Starting
// ---------------------------------------------------------------------------

/// Why [`launch_with_retries`] gave up.
#[derive(Debug)]
enum LaunchError {
    /// postgres found another postmaster holding the data directory.
    LockedByOther,
    /// Anything else.
    Failed(EmbeddedError),
}

/// Where ephemeral clusters go: the first of `$TMPDIR`, `/tmp`, `/var/tmp`
/// that the postgres user can reach.
fn ephemeral_base(run_as: Option<OsUser>) -> PathBuf {
    let temp = std::env::temp_dir();
    let temp = fs::canonicalize(&temp).unwrap_or(temp);
    let Some(user) = run_as else {
        return temp;
    };
    [
        temp.clone(),
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
    ]
    .into_iter()
    .find(|dir| user_can_reach(dir, user))
    .unwrap_or(temp)
}

/// Deletes ephemeral cluster directories left behind by dead processes whose
/// supervisor could not clean up (e.g. it was itself killed). Best effort.
fn sweep_stale_ephemeral(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(owner_pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(EPHEMERAL_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if process_alive(owner_pid) != Some(false) {
            continue;
        }
        let path = entry.path();
        let postmaster = fs::read_to_string(path.join("pgdata").join("postmaster.pid"))
            .ok()
            .and_then(|c| c.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if postmaster.is_some_and(is_live_postgres) {
            continue;
        }
        if fs::remove_dir_all(&path).is_ok() {
            tracing::debug!("removed stale ephemeral cluster {}", path.display());
        }
    }
}

/// Creates the data, socket and log locations, owned by the postgres user.
fn prepare_cluster_dirs(paths: &ClusterPaths, run_as: Option<OsUser>) -> Result<()> {
    fs::create_dir_all(&paths.root).map_err(io_err("create directory", &paths.root))?;
    create_owned_dir(&paths.data, 0o700, run_as)?;
    create_owned_dir(&paths.socket, 0o700, run_as)?;
    if fs::metadata(&paths.log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let rotated = paths.root.join("postgres.log.1");
        fs::rename(&paths.log, &rotated).map_err(io_err("rotate", &paths.log))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(io_err("create", &paths.log))?;
    chown_to(&paths.log, run_as)
}

async fn run_initdb(
    binaries: &PgBinaries,
    paths: &ClusterPaths,
    run_as: Option<OsUser>,
    ephemeral: bool,
) -> Result<()> {
    tracing::info!(
        "initialising a PostgreSQL cluster in {}",
        paths.data.display()
    );
    let mut cmd = tokio::process::Command::new(binaries.initdb());
    cmd.arg("-D")
        .arg(&paths.data)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ])
        .current_dir(&paths.root)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if ephemeral {
        // Smaller WAL segments keep the throwaway directory small.
        cmd.arg("--wal-segsize=1");
    }
    match run_tool(cmd, run_as, binaries.initdb()).await? {
        None => Ok(()),
        Some((status, output)) => Err(EmbeddedError::InitDb {
            data_dir: paths.data.clone(),
            status,
            output,
        }),
    }
}

/// Runs a cluster tool to its end (as `run_as`, if given): `None` when it
/// succeeded, else its exit status and its output (stdout, then stderr).
async fn run_tool(
    mut cmd: tokio::process::Command,
    run_as: Option<OsUser>,
    binary: PathBuf,
) -> Result<Option<(std::process::ExitStatus, String)>> {
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let output = cmd.output().await.map_err(io_err("run", binary))?;
    if output.status.success() {
        return Ok(None);
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(Some((output.status, text)))
}

/// Clones the cluster at `primary` into `paths.data` (empty) as a standby:
/// `pg_basebackup -R` writes `standby.signal` and the `primary_conninfo`
/// it connected with (and `primary_slot_name`); `-S` streams through the
/// replication slot `slot` ([`create_slot`]); `-X stream` copies the WAL
/// written meanwhile, so the copy is consistent; `-c fast` checkpoints at
/// once instead of spreading the checkpoint out.
async fn run_basebackup(
    binaries: &PgBinaries,
    paths: &ClusterPaths,
    run_as: Option<OsUser>,
    primary: &str,
    slot: &str,
) -> Result<()> {
    tracing::info!(
        "cloning a standby into {} with pg_basebackup",
        paths.data.display()
    );
    let mut cmd = tokio::process::Command::new(binaries.pg_basebackup());
    cmd.arg("-d")
        .arg(primary)
        .arg("-D")
        .arg(&paths.data)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w", "-S"])
        .arg(slot)
        .current_dir(&paths.root)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match run_tool(cmd, run_as, binaries.pg_basebackup()).await? {
        None => Ok(()),
        Some((status, output)) => Err(EmbeddedError::StartFailed {
            data_dir: paths.data.clone(),
            reason: format!("pg_basebackup failed ({status})"),
            log: paths.log.clone(),
            log_tail: output,
        }),
    }
}

/// Creates the physical replication slot `slot` on `primary`, reserving
/// WAL at once: from then on the primary keeps every segment the standby
/// will need. It must exist before the base backup starts (which
/// `pg_basebackup -C` does not ensure: it creates the slot only once the
/// backup has begun, and a checkpoint in between, say another clone's,
/// may recycle the segment the backup starts in).
async fn create_slot(primary: &str, slot: &str) -> Result<()> {
    let sql_err = |context: &str| {
        let context = format!("{context} on {primary}");
        move |source| EmbeddedError::Sql { context, source }
    };
    let mut conn = sqlx::PgConnection::connect(primary)
        .await
        .map_err(sql_err("could not connect to the primary"))?;
    sqlx::query("SELECT pg_create_physical_replication_slot($1, true)")
        .bind(slot)
        .execute(&mut conn)
        .await
        .map_err(sql_err("could not create a replication slot"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Drops the replication slot `slot` of a standby on `primary`, once its
/// walsender has let go of it (it exits shortly after the standby stops).
/// Best effort: a failure is logged.
async fn drop_slot(primary: &str, slot: &str) {
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    loop {
        let dropped: std::result::Result<(), sqlx::Error> = async {
            let mut conn = sqlx::PgConnection::connect(primary).await?;
            let active: Option<bool> =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(slot)
                    .fetch_optional(&mut conn)
                    .await?;
            match active {
                None => {}
                Some(true) => {
                    let _ = conn.close().await;
                    return Err(sqlx::Error::Protocol("the slot is still in use".into()));
                }
                Some(false) => {
                    sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(slot)
                        .execute(&mut conn)
                        .await?;
                }
            }
            let _ = conn.close().await;
            Ok(())
        }
        .await;
        match dropped {
            Ok(()) => return,
            Err(err) if Instant::now() >= deadline => {
                tracing::warn!(slot, "could not drop the standby's replication slot: {err}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The port to start on: the remembered one if it is free, else a new free one.
fn choose_port(paths: &ClusterPaths, remember: bool, avoid: &[u16]) -> Result<u16> {
    let remembered = fs::read_to_string(&paths.port_file)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|port| *port != 0 && !avoid.contains(port));
    let port = match remembered {
        Some(port) if port_is_free(port) => port,
        _ => {
            let mut port = pick_free_port()?;
            while avoid.contains(&port) {
                port = pick_free_port()?;
            }
            port
        }
    };
    if remember {
        let mut file = File::create(&paths.port_file).map_err(io_err("write", &paths.port_file))?;
        writeln!(file, "{port}").map_err(io_err("write", &paths.port_file))?;
    }
    Ok(port)
}

/// Starts postgres, retrying on a different port if the chosen one was taken.
async fn launch_with_retries(
    launch: &Launch<'_>,
    cleanup: Option<&Path>,
) -> Result<EmbeddedPostgres, LaunchError> {
    let paths = launch.paths;
    let mut tried = Vec::new();
    let mut last_log = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = choose_port(paths, !launch.ephemeral, &tried).map_err(LaunchError::Failed)?;
        tried.push(port);
        match start_once(launch, port, cleanup).await {
            Ok(supervisor) => {
                tracing::info!(
                    port,
                    "embedded PostgreSQL running for {} (log: {})",
                    paths.data.display(),
                    paths.log.display()
                );
                return Ok(EmbeddedPostgres {
                    port,
                    paths: paths.clone(),
                    lifetime: if launch.ephemeral {
                        ClusterLifetime::Ephemeral
                    } else {
                        ClusterLifetime::Owned
                    },
                    relaunch: Some(Relaunch {
                        binaries: launch.binaries.clone(),
                        run_as: launch.run_as,
                    }),
                    supervisor: tokio::sync::Mutex::new(Some(supervisor)),
                    upstream: None,
                });
            }
            Err(AttemptError::Fatal(err)) => return Err(LaunchError::Failed(err)),
            Err(AttemptError::Exited { log }) => {
                if log.contains("lock file \"postmaster.pid\" already exists") {
                    return Err(LaunchError::LockedByOther);
                }
                let port_taken = log.contains("could not create any TCP/IP sockets")
                    || log.contains("Address already in use");
                if !port_taken {
                    return Err(LaunchError::Failed(EmbeddedError::StartFailed {
                        data_dir: paths.data.clone(),
                        reason: "postgres exited during startup".to_owned(),
                        log: paths.log.clone(),
                        log_tail: last_lines(&log, 30),
                    }));
                }
                tracing::debug!(port, "port was taken; retrying on another one");
                last_log = log;
            }
        }
    }
    Err(LaunchError::Failed(EmbeddedError::StartFailed {
        data_dir: paths.data.clone(),
        reason: format!("could not bind a TCP port after trying {tried:?}"),
        log: paths.log.clone(),
        log_tail: last_lines(&last_log, 30),
    }))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One start attempt on `port`: spawn the supervisor and wait for readiness.
async fn start_once(
    launch: &Launch<'_>,
    port: u16,
    cleanup: Option<&Path>,
) -> std::result::Result<Supervisor, AttemptError> {
    let paths = launch.paths;
    let log_start = fs::metadata(&paths.log).map(|m| m.len()).unwrap_or(0);
    let supervisor = spawn_supervisor(launch, port, cleanup).map_err(AttemptError::Fatal)?;

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let last_error = match probe(port).await {
            Ok(data_dir) if same_dir(Path::new(&data_dir), &paths.data) => return Ok(supervisor),
            // Someone else answered on our port; ours will fail to bind and exit.
            Ok(other) => format!("port {port} is served by another cluster ({other})"),
            Err(err) => err,
        };
        let exited = supervisor
            .postgres_pid
            .and_then(process_alive)
            .is_some_and(|alive| !alive);
        if exited {
            let log = log_tail(&paths.log, log_start, 200);
            supervisor.discard();
            return Err(AttemptError::Exited { log });
        }
        if Instant::now() >= deadline {
            let _ = supervisor.shutdown(SHUTDOWN_TIMEOUT).await;
            return Err(AttemptError::Fatal(EmbeddedError::StartFailed {
                data_dir: paths.data.clone(),
                reason: format!(
                    "port {port} did not accept connections within {} s (last error: {last_error})",
                    STARTUP_TIMEOUT.as_secs()
                ),
                log: paths.log.clone(),
                log_tail: log_tail(&paths.log, log_start, 30),
            }));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The `-c name=value` settings passed to postgres.
fn server_settings(launch: &Launch<'_>) -> Vec<String> {
    let socket_path_len = launch.paths.socket.as_os_str().len() + "/.s.PGSQL.65535".len();
    let socket_dir = if socket_path_len <= MAX_SOCKET_PATH {
        launch.paths.socket.to_string_lossy().into_owned()
    } else {
        tracing::debug!(
            "socket directory {} is too long for a unix socket; TCP only",
            launch.paths.socket.display()
        );
        String::new()
    };
    let mut settings = vec![
        "listen_addresses=127.0.0.1".to_owned(),
        format!("unix_socket_directories={socket_dir}"),
        "max_connections=300".to_owned(),
        "shared_buffers=128MB".to_owned(),
        // initdb's defaults, said out loud: a standby may be cloned from
        // any cluster started here (`start_standby`).
        "wal_level=replica".to_owned(),
        "max_wal_senders=10".to_owned(),
    ];
    // Statement statistics, where the server ships the module: what an
    // operator (or a test counting a request's statements) reads first.
    let module = launch.binaries.bindir.join("../lib/pg_stat_statements.so");
    if module.exists() {
        settings.push("shared_preload_libraries=pg_stat_statements".to_owned());
        settings.push("pg_stat_statements.track=all".to_owned());
    }
    if launch.ephemeral {
        // Commits stay synchronous: without fsync a synchronous commit is one
        // write(2), and it keeps every acknowledged commit across a server
        // crash (`stop_immediate`); what fsync=off risks is an OS crash only.
        settings.extend(
            [
                "fsync=off",
                "full_page_writes=off",
                "max_wal_size=256MB",
                "min_wal_size=16MB",
            ]
            .map(str::to_owned),
        );
    } else {
        settings.push(format!("min_wal_size={MIN_WAL_SIZE}"));
    }
    settings
}

/// Spawns `sh` supervising `postgres` (see [`SUPERVISOR_SCRIPT`]).
fn spawn_supervisor(launch: &Launch<'_>, port: u16, cleanup: Option<&Path>) -> Result<Supervisor> {
    let paths = launch.paths;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(io_err("open", &paths.log))?;

    let mut args: Vec<OsString> = vec![
        cleanup
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_default(),
        launch.binaries.postgres().into_os_string(),
        "-D".into(),
        paths.data.clone().into_os_string(),
        "-p".into(),
        port.to_string().into(),
    ];
    for setting in server_settings(launch) {
        args.push("-c".into());
        args.push(setting.into());
    }

    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(SUPERVISOR_SCRIPT)
        .arg("marketplace-pg-supervisor")
        .args(&args)
        .current_dir(&paths.data)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Own process group: a terminal Ctrl-C goes to the application only,
        // which then stops the cluster in order (or simply exits).
        .process_group(0);
    if let Some(user) = launch.run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let mut child = cmd.spawn().map_err(io_err("spawn", "/bin/sh"))?;
    let stdin = child.stdin.take();

    // The supervisor prints postgres's pid first thing; then its stdout is closed.
    let postgres_pid = child.stdout.take().and_then(|stdout| {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).ok()?;
        line.trim().parse::<u32>().ok()
    });

    Ok(Supervisor {
        child,
        stdin,
        postgres_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgConnection;

    async fn accepts_connections(port: u16) -> bool {
        probe(port).await.is_ok()
    }

    #[test]
    fn discovery_finds_this_machines_binaries() {
        let binaries = PgBinaries::discover().expect("PostgreSQL binaries on this machine");
        assert!(binaries.initdb().is_file(), "{binaries:?}");
        assert!(binaries.postgres().is_file(), "{binaries:?}");
    }

    #[test]
    fn missing_binaries_message_says_what_to_install() {
        let message = EmbeddedError::BinariesNotFound { searched: vec![] }.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("pg_config --bindir"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn versioned_dirs_are_sorted_newest_first() {
        let root = std::env::temp_dir().join(format!("pgvers-{}", rand::random::<u32>()));
        for version in ["9.6", "15", "14", "not-a-version"] {
            fs::create_dir_all(root.join(version).join("bin")).expect("mkdir");
        }
        let dirs = versioned_lib_dirs(&root);
        let _ = fs::remove_dir_all(&root);
        let names: Vec<String> = dirs
            .iter()
            .map(|d| {
                d.parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .map(|n| n.unwrap_or_default())
            .collect();
        assert_eq!(names, ["15", "14", "9.6"]);
    }

    #[test]
    fn passwd_lookup_and_reachability() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PG:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            lookup_user(passwd, "postgres"),
            Some(OsUser { uid: 101, gid: 104 })
        );
        assert_eq!(lookup_user(passwd, "nobody"), None);
        let stranger = OsUser {
            uid: 54321,
            gid: 54321,
        };
        assert!(user_can_reach(Path::new("/usr/lib"), stranger));
        let root_home_mode = fs::metadata("/root").map(|m| m.mode() & 0o001);
        if root_home_mode.is_ok_and(|m| m == 0) {
            assert!(!user_can_reach(Path::new("/root"), stranger));
        }
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[tokio::test]
    async fn ephemeral_cluster_starts_serves_and_stops() {
        let pg = EmbeddedPostgres::start_ephemeral()
            .await
            .expect("start ephemeral cluster");
        assert_eq!(pg.lifetime(), ClusterLifetime::Ephemeral);
        let root = pg.cluster_dir().to_path_buf();
        let port = pg.port();

        let mut conn = PgConnection::connect(&pg.admin_url())
            .await
            .expect("connect");
        let one: i32 = sqlx::query_scalar("select 1")
            .fetch_one(&mut conn)
            .await
            .expect("select 1");
        assert_eq!(one, 1);
        let fsync: String = sqlx::query_scalar("show fsync")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(fsync, "off");
        let synchronous_commit: String = sqlx::query_scalar("show synchronous_commit")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(
            synchronous_commit, "on",
            "a crash would lose acknowledged commits"
        );
        let max: String = sqlx::query_scalar("show max_connections")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        assert_eq!(max, "300");
        conn.close().await.expect("close");

        pg.ensure_database("some db")
            .await
            .expect("create database");
        pg.ensure_database("some db")
            .await
            .expect("create database again");
        let mut conn = PgConnection::connect(&pg.database_url("some db"))
            .await
            .expect("connect db");
        let name: String = sqlx::query_scalar("select current_database()")
            .fetch_one(&mut conn)
            .await
            .expect("db");
        assert_eq!(name, "some db");
        conn.close().await.expect("close");

        pg.stop().await.expect("stop");
        assert!(
            !accepts_connections(port).await,
            "port {port} still accepts connections"
        );
        assert!(!root.exists(), "{} was not removed", root.display());
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_as_such() {
        let binaries = PgBinaries::discover().expect("binaries");
        let run_as = run_as_user().expect("run-as user");
        let base = ephemeral_base(run_as);
        let paths = ClusterPaths::new(
            base.join(format!("marketplace-port-test-{}", rand::random::<u32>())),
        );
        create_owned_dir(&paths.root, 0o755, run_as).expect("mkdir");
        prepare_cluster_dirs(&paths, run_as).expect("prepare");
        run_initdb(&binaries, &paths, run_as, true)
            .await
            .expect("initdb");

        let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        let launch = Launch {
            binaries: &binaries,
            paths: &paths,
            run_as,
            ephemeral: true,
        };
        let outcome = start_once(&launch, port, None).await;
        let _ = fs::remove_dir_all(&paths.root);
        match outcome {
            Err(AttemptError::Exited { log }) => {
                assert!(log.contains("could not create any TCP/IP sockets"), "{log}")
            }
            Err(AttemptError::Fatal(err)) => panic!("expected an early exit, got {err}"),
            Ok(_) => panic!("postgres started on a taken port"),
        }
        drop(blocker);
    }

    #[tokio::test]
    async fn start_or_reuse_reuses_a_running_cluster() {
        let dir =
            std::env::temp_dir().join(format!("marketplace-reuse-test-{}", rand::random::<u32>()));
        let first = EmbeddedPostgres::start_or_reuse(&dir)
            .await
            .expect("first start");
        assert_eq!(first.lifetime(), ClusterLifetime::Owned);
        let port = first.port();
        let remembered = fs::read_to_string(first.cluster_dir().join("port")).expect("port file");
        assert_eq!(remembered.trim(), port.to_string());
        // A served cluster is durable, and recycles its WAL.
        let (fsync, min_wal): (String, String) = {
            let mut conn = PgConnection::connect(&first.admin_url())
                .await
                .expect("connect");
            let value =
                sqlx::query_as("SELECT current_setting('fsync'), current_setting('min_wal_size')")
                    .fetch_one(&mut conn)
                    .await
                    .expect("show");
            conn.close().await.expect("close");
            value
        };
        assert_eq!(fsync, "on");
        assert_eq!(min_wal, MIN_WAL_SIZE);
        // ... and its reusable WAL segments were made at its first start.
        let (made, wanted): (i64, i64) = {
            let mut conn = PgConnection::connect(&first.admin_url())
                .await
                .expect("connect");
            let counts = sqlx::query_as(WAL_SEGMENTS_MADE_AND_WANTED)
                .fetch_one(&mut conn)
                .await
                .expect("count segments");
            conn.close().await.expect("close");
            counts
        };
        assert_eq!(wanted, 32, "512 MB of 16 MB segments");
        assert!(made >= wanted, "{made} of {wanted} WAL segments made");

        let second = EmbeddedPostgres::start_or_reuse(&dir)
            .await
            .expect("second start");
        assert_eq!(second.lifetime(), ClusterLifetime::Reused);
        assert_eq!(second.port(), port);
        assert_eq!(second.admin_url(), first.admin_url());
        second.stop().await.expect("stop reused handle");
        assert!(
            accepts_connections(port).await,
            "stopping a reused handle stopped the cluster"
        );

        let cluster_dir = first.cluster_dir().to_path_buf();
        first.stop().await.expect("stop owned cluster");
        assert!(
            !accepts_connections(port).await,
            "port {port} still accepts connections"
        );

        // A restart on the same data keeps the remembered port.
        let third = EmbeddedPostgres::start_or_reuse(&dir)
            .await
            .expect("restart");
        assert_eq!(third.lifetime(), ClusterLifetime::Owned);
        assert_eq!(third.port(), port);
        third.stop().await.expect("stop again");

        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&cluster_dir);
    }
}
