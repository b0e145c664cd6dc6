//! Fixtures for the OCI runtime tests: bundles built from the busybox rootfs and a config the
//! test edits, a private run root, unique container ids, and cleanup guards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// A unique container id for this test process: `prefix-<pid>-<n>`.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An OCI bundle in a temp dir: `rootfs/` (busybox) and `config.json` from `twinbox spec`.
pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    /// A bundle whose process runs `args` on a writable root, with the config then changed by
    /// `edit`.
    pub fn new(args: &[&str], edit: impl FnOnce(&mut Value)) -> Bundle {
        let dir = tempfile::tempdir().expect("temp dir for the bundle");
        crate::busybox_rootfs(&dir.path().join("rootfs")).expect("busybox rootfs");
        let out = Command::new(crate::twinbox_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .expect("twinbox spec");
        assert!(
            out.status.success(),
            "twinbox spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bundle = Bundle { dir };
        bundle.edit(|config| {
            config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
            config["root"]["readonly"] = Value::from(false);
            edit(config);
        });
        bundle
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The rootfs directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Edits config.json.
    pub fn edit(&mut self, edit: impl FnOnce(&mut Value)) {
        let path = self.dir.path().join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
    }
}

/// A private run root; containers created through it are force-deleted on drop, so a failing
/// test leaves no processes, cgroups or state behind.
pub struct Runtime {
    root: tempfile::TempDir,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// A runtime with its own `--root`.
    pub fn new() -> Runtime {
        Runtime {
            root: tempfile::tempdir().expect("temp run root"),
            ids: Default::default(),
        }
    }

    /// The run root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Remembers `id` for cleanup and returns it.
    pub fn track(&self, id: &str) -> String {
        self.ids.borrow_mut().push(id.to_string());
        id.to_string()
    }

    /// `twinbox --root ROOT ARGS...` as a command (not run yet).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(crate::twinbox_bin());
        cmd.arg("--root").arg(self.root.path()).args(args);
        cmd
    }

    /// Runs `twinbox --root ROOT ARGS...` and returns its output.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        output_via_files(self.command(args))
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "twinbox failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `create --bundle B ID` (tracked for cleanup); asserts success.
    pub fn create(&self, bundle: &Bundle, id: &str) {
        self.track(id);
        self.ok(["create", "--bundle", bundle.path().to_str().unwrap(), id]);
    }

    /// The parsed `state ID`.
    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(["state", id])).expect("state JSON")
    }

    /// The status field of `state ID`.
    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `run --bundle B ID` in the foreground: (exit code, stdout, stderr).
    pub fn run_bundle(&self, bundle: &Bundle, id: &str) -> (i32, String, String) {
        self.track(id);
        let out = self.run(["run", "--bundle", bundle.path().to_str().unwrap(), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Polls `state ID` until the container exists and has `status` (up to 5 s).
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let current = || {
            let out = self.run(["state", id]);
            serde_json::from_slice::<Value>(&out.stdout)
                .map(|s| s["status"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        while current() != status {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never became {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.run(["delete", "--force", id]);
        }
        remove_empty_cgroup_parent("twinbox");
    }
}

/// Removes the parent cgroup `name` (e.g. "twinbox", created for /twinbox/ID paths) from every
/// hierarchy when it is empty; a parent still in use stays (rmdir fails with EBUSY).
pub fn remove_empty_cgroup_parent(name: &str) {
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(entries.flatten().map(|e| e.path()));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir(dir.join(name));
    }
}

/// Runs `command` with stdout and stderr in temp files instead of pipes: a container created
/// by it inherits them and may outlive twinbox, and a pipe would then never reach EOF.
pub fn output_via_files(mut command: Command) -> Output {
    use std::io::{Read, Seek};
    let mut stdout = tempfile::tempfile().expect("temp file");
    let mut stderr = tempfile::tempfile().expect("temp file");
    command
        .stdin(std::process::Stdio::null())
        .stdout(stdout.try_clone().expect("dup"))
        .stderr(stderr.try_clone().expect("dup"));
    let status = command.status().expect("running twinbox");
    let read = |file: &mut std::fs::File| {
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|_| file.read_to_end(&mut bytes))
            .expect("read output");
        bytes
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

/// Host cgroup v1 directory of a container for `controller` (e.g. "memory"), for the default
/// cgroups path twinbox uses (/twinbox/ID).
pub fn host_cgroup_dir(controller: &str, id: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join("twinbox")
        .join(id)
}

/// A unix socket listening like an engine's console socket: receives the pty master.
pub struct ConsoleSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl Default for ConsoleSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleSocket {
    /// Binds a new socket in a temp dir.
    pub fn new() -> ConsoleSocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        ConsoleSocket {
            _dir: dir,
            path,
            listener,
        }
    }

    /// The socket path to pass as --console-socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and receives the pty master (SCM_RIGHTS).
    pub fn receive_master(&self) -> std::fs::File {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd};
        let (stream, _) = self.listener.accept().expect("accept");
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        for cmsg in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: the kernel installed this fd for us.
                return unsafe { std::fs::File::from_raw_fd(fds[0]) };
            }
        }
        panic!("no fd received on the console socket");
    }
}

/// Reads from a pty master until `needle` shows up or 5 s pass; returns what was read.
pub fn read_until(master: &mut std::fs::File, needle: &str) -> String {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    while !text.contains(needle) && std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    text
}
