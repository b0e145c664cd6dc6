//! Compiling the spec's `linux.seccomp` profile into a BPF filter with libseccomp (linked
//! statically) and loading it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// Errors while compiling or loading a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile uses something twinbox cannot express.
    #[error("seccomp profile: {0}")]
    Invalid(String),
    /// libseccomp refused an operation.
    #[error("seccomp: {step}: {source}")]
    Library {
        /// What was being done.
        step: String,
        /// libseccomp's error.
        source: libseccomp::error::SeccompError,
    },
}

fn lib(step: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let step = step.into();
    move |source| SeccompError::Library { step, source }
}

/// The spec's name of an enum value (its serde form, e.g. "SCMP_ACT_ERRNO").
fn spec_name<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{value:?}"))
}

/// Actions twinbox supports, in the spec's names (for `features`).
pub const ACTIONS: [&str; 8] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// Argument operators twinbox supports (for `features`).
pub const OPERATORS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// Architectures twinbox accepts in profiles (for `features`).
pub const ARCHITECTURES: [&str; 3] = ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"];

/// Filter flags twinbox supports (for `features`).
pub const FLAGS: [&str; 3] = [
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
];

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Invalid(
                "SCMP_ACT_NOTIFY needs a seccomp listener (listenerPath), which twinbox does not \
                 support; use SCMP_ACT_ERRNO or SCMP_ACT_KILL_PROCESS"
                    .into(),
            ));
        }
    })
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    let index = arg.index() as u32;
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: value is the mask, valueTwo the value to compare with.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            );
        }
    };
    ScmpArgCompare::new(index, op, arg.value())
}

/// A compiled BPF filter, ready to load. Compiled before the container process is forked,
/// so the child only makes one seccomp(2) call (no allocation, no library state).
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

/// Where compiled programs are kept between runs (see [`set_cache_dir`]).
static CACHE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Keeps compiled BPF programs in `dir` from now on (None: compile every time). A program is
/// keyed by the SHA-256 of the profile, libseccomp's version and API level, and the kernel, so
/// a container whose profile was seen before skips libseccomp's compile (milliseconds for
/// Docker's default profile, most of a container's start). `dir` must be writable by its
/// owner only: a program read from it is trusted. Its files are written atomically.
pub fn set_cache_dir(dir: Option<PathBuf>) {
    *CACHE_DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Programs compiled elsewhere, by profile (see [`provide_program`]).
static PROVIDED: Mutex<Vec<(LinuxSeccomp, Vec<u8>)>> = Mutex::new(Vec::new());

/// Uses `program` (as [`program_bytes`] made it) for `profile` from now on instead of
/// compiling the profile here: a VM's host compiles its workload's profile once (with its
/// cache) and the guest agent, which has no cache and runs libseccomp's compile at emulated
/// speed under nested virtualization, only loads it. The program must come from a trusted
/// source; a malformed one is refused.
pub fn provide_program(profile: &LinuxSeccomp, program: Vec<u8>) -> Result<(), SeccompError> {
    if !well_formed(&program) {
        return Err(SeccompError::Invalid(format!(
            "a compiled program of {} bytes is not a BPF program",
            program.len()
        )));
    }
    PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((profile.clone(), program));
    Ok(())
}

/// The BPF program of `profile` as bytes (struct sock_filter in native order): provided,
/// cached or compiled.
pub fn program_bytes(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    let provided = PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(known, _)| known == profile)
        .map(|(_, program)| program.clone());
    if let Some(program) = provided {
        return Ok(program);
    }
    let cache = cache_path(profile);
    if let Some(bytes) = cache.as_deref().and_then(read_cached) {
        return Ok(bytes);
    }
    let bytes = compile_bpf(profile)?;
    if let Some(path) = &cache {
        write_cached(path, &bytes);
    }
    Ok(bytes)
}

/// Longest program the kernel accepts (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

/// The cache file of `profile`, when a cache is set.
fn cache_path(profile: &LinuxSeccomp) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let dir = CACHE_DIR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(profile).ok()?);
    let version = libseccomp::ScmpVersion::current().ok()?;
    let kernel = nix::sys::utsname::uname().ok()?;
    hasher.update(format!(
        "\0libseccomp {}.{}.{} api {}\0{} {}\0twinbox-sandbox {}",
        version.major,
        version.minor,
        version.micro,
        libseccomp::get_api(),
        kernel.release().to_string_lossy(),
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION"),
    ));
    let key: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(dir.join(format!("{key}.bpf")))
}

/// Whether `bytes` can be a BPF program: whole instructions, at least one, at most
/// [`MAX_INSTRUCTIONS`].
fn well_formed(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .len()
            .is_multiple_of(std::mem::size_of::<libc::sock_filter>())
        && bytes.len() <= MAX_INSTRUCTIONS * std::mem::size_of::<libc::sock_filter>()
}

/// A cached program, if it is there and well-formed.
fn read_cached(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    well_formed(&bytes).then_some(bytes)
}

/// Stores a program (best effort: a failure only costs the next compile).
fn write_cached(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(dir) = path.parent() else { return };
    let temp = dir.join(format!(".{}.tmp", std::process::id()));
    let result = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)
        })
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temp);
        tracing::debug!("caching the seccomp program in {}: {err}", dir.display());
    }
}

/// The filter flags of `profile` (seccomp(2)'s SECCOMP_FILTER_FLAG_*).
fn filter_flags(profile: &LinuxSeccomp) -> Result<libc::c_ulong, SeccompError> {
    let mut flags: libc::c_ulong = 0;
    for flag in profile.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags |= SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => flags |= SECCOMP_FILTER_FLAG_TSYNC,
            other => {
                return Err(SeccompError::Invalid(format!(
                    "filter flag {} is not supported",
                    spec_name(other)
                )));
            }
        }
    }
    Ok(flags)
}

/// libseccomp's BPF program for `profile`, as bytes (struct sock_filter in native order).
fn compile_bpf(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut context = ScmpFilterContext::new(default).map_err(lib("creating the filter"))?;
    for arch in profile.architectures().iter().flatten() {
        let name = spec_name(arch);
        let scmp: ScmpArch = name
            .parse()
            .map_err(|_| SeccompError::Invalid(format!("unknown architecture {name}")))?;
        context
            .add_arch(scmp)
            .map_err(lib(format!("adding architecture {name}")))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        add_rule(&mut context, rule, default)?;
    }
    let mut bpf = crate::memfd("twinbox-seccomp").map_err(|e| {
        SeccompError::Invalid(format!("creating a buffer for the BPF program: {e}"))
    })?;
    context.export_bpf(&bpf).map_err(lib("generating BPF"))?;
    let mut bytes = Vec::new();
    use std::io::{Read, Seek};
    bpf.rewind()
        .and_then(|_| bpf.read_to_end(&mut bytes))
        .map_err(|e| SeccompError::Invalid(format!("reading the BPF program: {e}")))?;
    Ok(bytes)
}

impl Filter {
    /// Compiles an OCI seccomp profile (or takes it from [`provide_program`] or the cache,
    /// see [`set_cache_dir`]).
    /// Syscall names this libseccomp does not know are skipped (as runc does); rules whose
    /// action equals the default are redundant and skipped.
    pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, SeccompError> {
        let flags = filter_flags(profile)?;
        let bytes = program_bytes(profile)?;
        let program = bytes
            .chunks_exact(8)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Filter { program, flags })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// True for an empty program (never produced by `compile`).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling process. Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn load(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog points at self.program, which lives for the duration of the call; the
        // kernel copies the program.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;

fn add_rule(
    context: &mut ScmpFilterContext,
    rule: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SeccompError> {
    let act = action(rule.action(), rule.errno_ret())?;
    if act == default {
        return Ok(());
    }
    let args = rule.args().clone().unwrap_or_default();
    // libseccomp cannot AND two conditions on the same argument: such rules become one rule per
    // condition (an OR), as runc does.
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    let groups: Vec<Vec<ScmpArgCompare>> = if repeated {
        args.iter().map(|a| vec![compare(a)]).collect()
    } else {
        vec![args.iter().map(compare).collect()]
    };
    for name in rule.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!(syscall = %name, "seccomp: syscall unknown to libseccomp, skipped");
            continue;
        };
        for conditions in &groups {
            context
                .add_rule_conditional(act, syscall, conditions)
                .map_err(lib(format!("adding the rule for {name}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "not_a_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"},
                      {"index": 0, "value": 4294967295, "op": "SCMP_CMP_NE"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    }"#;

    #[test]
    fn profile_compiles_to_bpf() {
        let profile: LinuxSeccomp = serde_json::from_str(PROFILE).unwrap();
        let filter = Filter::compile(&profile).unwrap();
        // An arch check plus the rules for 3 architectures.
        assert!(filter.len() > 10, "{} instructions", filter.len());
    }

    #[test]
    fn programs_are_cached_by_profile() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        set_cache_dir(Some(cache.clone()));
        // A profile of this test only: the others compile PROFILE meanwhile.
        let mut profile: LinuxSeccomp = serde_json::from_str(PROFILE).unwrap();
        profile.set_default_errno_ret(Some(77));
        let compiled = Filter::compile(&profile).unwrap();
        let path = cache_path(&profile).unwrap();
        set_cache_dir(None);
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(stored.len(), compiled.len() * 8);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // What is read back is what was stored: plant a different valid program.
        let planted = &stored[..stored.len() - 8];
        std::fs::write(&path, planted).unwrap();
        set_cache_dir(Some(cache.clone()));
        let cached = Filter::compile(&profile).unwrap();
        assert_eq!(cached.len(), compiled.len() - 1);
        // A damaged entry is compiled again and replaced.
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(Filter::compile(&profile).unwrap().len(), compiled.len());
        assert_eq!(std::fs::read(&path).unwrap(), stored);
        // Another profile has another key.
        let mut other = profile.clone();
        other.set_default_errno_ret(Some(78));
        assert_ne!(cache_path(&other), cache_path(&profile));
        set_cache_dir(None);
    }

    #[test]
    fn a_provided_program_is_used_instead_of_compiling() {
        // A profile of this test only: the others compile PROFILE meanwhile.
        let mut profile: LinuxSeccomp = serde_json::from_str(PROFILE).unwrap();
        profile.set_default_errno_ret(Some(79));
        let compiled = program_bytes(&profile).unwrap();
        assert!(matches!(
            provide_program(&profile, b"not bpf".to_vec()),
            Err(SeccompError::Invalid(_))
        ));
        // A different valid program proves that the provided one is what is loaded.
        let provided = compiled[..compiled.len() - 8].to_vec();
        provide_program(&profile, provided.clone()).unwrap();
        assert_eq!(program_bytes(&profile).unwrap(), provided);
        assert_eq!(Filter::compile(&profile).unwrap().len() * 8, provided.len());
        let mut other = profile.clone();
        other.set_default_errno_ret(Some(80));
        assert_eq!(program_bytes(&other).unwrap().len(), compiled.len());
    }

    #[test]
    fn filter_denies_in_a_child_process() {
        let profile: LinuxSeccomp = serde_json::from_str(PROFILE).unwrap();
        let filter = Filter::compile(&profile).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().join("x").to_str().unwrap()).unwrap();
        // SAFETY: the child only makes raw syscalls (no allocation) and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl with integer arguments (no_new_privs lets us load unprivileged).
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if filter.load().is_err() {
                    1
                } else {
                    // SAFETY: valid path pointer.
                    let ret = unsafe { libc::mkdir(target.as_ptr(), 0o755) };
                    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    if ret == -1 && errno == libc::EACCES {
                        0
                    } else {
                        2
                    }
                };
                // SAFETY: leaving the forked child without running the test harness.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), 0);
            }
        }
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn notify_is_refused_with_a_reason() {
        let profile: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
        let err = Filter::compile(&profile).unwrap_err();
        assert!(err.to_string().contains("listener"));
    }
}
