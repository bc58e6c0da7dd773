//! The crate's error type. Each variant says what failed, where (path, program, map) and what the
//! operator can do; the underlying kernel/aya error is kept as the `source`.

use std::{error::Error as StdError, io, path::PathBuf};

#[derive(thiserror::Error, Debug)]
pub enum EbpfError {
    #[error(
        "{action}: permission denied; loading eBPF needs root, or CAP_BPF + CAP_NET_ADMIN \
         (+ CAP_SYS_ADMIN to mount bpffs): run ferrule as root or grant these capabilities"
    )]
    PermissionDenied {
        action: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    #[error(
        "{path} is not a bpffs: mount one with `mount -t bpf bpf {path}` (or let `ferrule` do it \
         by running it as root)"
    )]
    NotBpffs { path: PathBuf },

    #[error("mounting bpffs at {path} failed: mount it yourself with `mount -t bpf bpf {path}`")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("node name {node:?} cannot name a pin directory: {reason}")]
    InvalidNode { node: String, reason: &'static str },

    #[error("{action} {path}")]
    PinPath {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "loading the eBPF object {object}.bpf.o into the kernel failed (a verifier rejection \
         includes the verifier log below)"
    )]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error("program `{program}`: {action} failed")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("map `{map}`: {action} failed")]
    Map {
        map: String,
        action: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("pinning at {path} failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    #[error(
        "the map pinned at {path} does not match this build ({detail}): the map ABI changed; \
         remove the pin (`rm {path}`, its contents are lost) or run the matching ferrule version"
    )]
    IncompatiblePinnedMap { path: PathBuf, detail: String },

    #[error("the embedded object {object}.bpf.o has no {what} `{name}`: ebpf/ is inconsistent")]
    MissingFromObject { object: &'static str, what: &'static str, name: &'static str },

    #[error("`{call}` failed")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("BPF_PROG_TEST_RUN input rejected: {0}")]
    TestRunInput(String),

    #[error("load balancer: {0}")]
    LbInput(String),

    #[error("interface {interface:?}: {action} failed")]
    Interface {
        interface: String,
        action: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl EbpfError {
    /// A failed syscall, turned into `PermissionDenied` when that is the cause.
    pub(crate) fn syscall(call: &'static str, source: io::Error) -> Self {
        if is_permission(&source) {
            return Self::PermissionDenied { action: call.to_owned(), source: Box::new(source) };
        }
        Self::Syscall { call, source }
    }

    pub(crate) fn load(object: &'static str, source: aya::EbpfError) -> Self {
        if chain_has_permission_error(&source) {
            return Self::PermissionDenied { action: format!("loading {object}.bpf.o"), source: Box::new(source) };
        }
        Self::Load { object, source: Box::new(source) }
    }

    pub(crate) fn program(program: &'static str, action: &'static str, source: aya::programs::ProgramError) -> Self {
        if chain_has_permission_error(&source) {
            return Self::PermissionDenied {
                action: format!("program `{program}`: {action}"),
                source: Box::new(source),
            };
        }
        Self::Program { program, action, source: Box::new(source) }
    }

    pub(crate) fn map(map: &str, action: &'static str, source: aya::maps::MapError) -> Self {
        if chain_has_permission_error(&source) {
            return Self::PermissionDenied { action: format!("map `{map}`: {action}"), source: Box::new(source) };
        }
        Self::Map { map: map.to_owned(), action, source: Box::new(source) }
    }

    pub(crate) fn pin_path(action: &'static str, path: PathBuf, source: io::Error) -> Self {
        if is_permission(&source) || source.raw_os_error() == Some(libc::EACCES) {
            return Self::PermissionDenied { action: format!("{action} {}", path.display()), source: Box::new(source) };
        }
        Self::PinPath { action, path, source }
    }
}

/// EPERM only: the verifier answers EACCES for programs it rejects, which is not about privilege.
fn is_permission(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EPERM)
}

/// Whether any error in `e`'s source chain is an EPERM from the kernel.
fn chain_has_permission_error(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<io::Error>().is_some_and(is_permission) {
            return true;
        }
        next = err.source();
    }
    false
}

/// Renders an error with its whole source chain on one line (`a: b: c`), for status entries.
pub(crate) fn chain_to_string(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        out.push_str(": ");
        out.push_str(&err.to_string());
        next = err.source();
    }
    out
}
