//! The few `bpf(2)` commands aya does not expose that Ferrule needs: reading a pinned link's
//! info (which interface and program an XDP link points at) and `BPF_PROG_TEST_RUN`. It owns the
//! raw syscall and its attribute layouts; callers get safe functions and must not see pointers.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

// Commands and link types from include/uapi/linux/bpf.h.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub(crate) const BPF_LINK_TYPE_XDP: u32 = 6;

/// Issues `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member the kernel expects for `cmd`, and every pointer
/// stored in it must be valid for the reads/writes the kernel does for `cmd` during the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: forwarded from this function's contract; the size passed is the size of `attr`.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut A as *mut libc::c_void, std::mem::size_of::<A>() as libc::c_uint)
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `union bpf_attr`'s member for `BPF_OBJ_GET`. Every attr struct here spells out its padding:
/// the kernel rejects non-zero bytes past the fields it knows, and implicit padding is
/// uninitialised.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens the BPF object pinned at `path` (map, program or link).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    // SAFETY: `attr` is the BPF_OBJ_GET layout and `pathname` points at a NUL-terminated string
    // that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr)? };
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_OBJ_GET returned a bad fd"))?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `union bpf_attr`'s member for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What Ferrule needs of `struct bpf_link_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub link_type: u32,
    pub prog_id: u32,
    /// For an XDP link, the interface it is attached to; 0 once that interface is gone.
    pub xdp_ifindex: u32,
}

/// Reads the info of the link behind `fd`.
pub(crate) fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // `struct bpf_link_info` is 8-byte aligned; its per-type union starts at byte 16. A buffer
    // larger than the kernel's struct is fine as long as the excess is zero.
    let mut buf = [0u64; 16];
    let mut attr = InfoByFdAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&buf) as u32,
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD layout; `info` points at `info_len` writable,
    // 8-byte aligned bytes that outlive the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let word = |i: usize| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    Ok(LinkInfo { link_type: word(0), prog_id: word(2), xdp_ifindex: word(4) })
}

/// `union bpf_attr`'s member for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Raw result of one `BPF_PROG_TEST_RUN`.
pub(crate) struct TestRunRaw {
    pub retval: u32,
    pub data_len: usize,
    pub duration_ns: u32,
}

/// Runs `prog` on `data_in` with context `ctx_in`, writing the resulting packet to `data_out`.
pub(crate) fn prog_test_run(
    prog: BorrowedFd<'_>,
    data_in: &[u8],
    data_out: &mut [u8],
    ctx_in: &[u8],
    repeat: u32,
) -> io::Result<TestRunRaw> {
    let len = |n: usize| u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer over 4 GiB"));
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len(data_in.len())?,
        data_size_out: len(data_out.len())?,
        data_in: data_in.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: len(ctx_in.len())?,
        // No context at all (tc programs under test) must be a null pointer, not a dangling one.
        ctx_in: if ctx_in.is_empty() { 0 } else { ctx_in.as_ptr() as u64 },
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_TEST_RUN layout; `data_in`/`ctx_in` are readable and
    // `data_out` writable for the sizes given, and all outlive the call. The kernel writes at
    // most `data_size_out` bytes and reports the full size in `data_size_out`.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr)? };
    Ok(TestRunRaw { retval: attr.retval, data_len: attr.data_size_out as usize, duration_ns: attr.duration })
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member (BPF_MAP_*_BATCH commands).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values[i]` at `keys[i]` in one syscall (`BPF_MAP_UPDATE_BATCH`): filling a Maglev
/// table of 65537 slots one element at a time would take as many syscalls.
pub(crate) fn map_update_batch_u32(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    if keys.len() != values.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "keys and values differ in length"));
    }
    let count =
        u32::try_from(keys.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "batch too large"))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the batch layout; `keys` and `values` hold `count` readable u32s each,
    // matching the map's 4-byte key and value sizes, and outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr)? };
    if attr.count != count {
        return Err(io::Error::other(format!("batch update stopped after {} of {count} elements", attr.count)));
    }
    Ok(())
}
