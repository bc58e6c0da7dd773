//! The few `bpf(2)` commands aya does not expose that Ferrule needs: reading a pinned link's
//! info (which interface and program an XDP link points at), `BPF_PROG_TEST_RUN` and
//! `BPF_MAP_UPDATE_BATCH`. It owns the raw syscall and its attribute layouts; callers get safe
//! functions and must not see pointers.

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
pub(crate) const BPF_LINK_TYPE_TCX: u32 = 11;

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
    /// For an XDP or a tcx link (the first member of the per-type union in both), the interface
    /// it is attached to; 0 once that interface is gone.
    pub ifindex: u32,
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
    Ok(LinkInfo { link_type: word(0), prog_id: word(2), ifindex: word(4) })
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

/// A packet socket (AF_PACKET, raw) that bypasses the qdisc, in the calling thread's network
/// namespace, where it stays: the benchmark generator seeds its loop through it.
pub(crate) fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bypass: libc::c_int = 1;
    // SAFETY: `bypass` is a c_int readable for its size; the fd is valid.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &bypass as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `count` copies of the Ethernet frame `frame` out of interface `ifindex` (of the socket's
/// network namespace) through `socket`, a [`packet_socket`]. Fails on the first frame the kernel
/// does not take.
pub(crate) fn send_raw_frames(socket: BorrowedFd<'_>, ifindex: u32, frame: &[u8], count: u32) -> io::Result<()> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    if frame.len() >= 6 {
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    }
    for _ in 0..count {
        // SAFETY: `frame` is readable for its length and `addr` is a sockaddr_ll of the size given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

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

/// The key and value sizes of the map behind `map`, as the kernel sees them (the first fields of
/// `struct bpf_map_info`: type, id, key_size, value_size). A map of maps reports 4-byte values:
/// user space writes inner maps as file descriptors.
fn map_kv_sizes(map: BorrowedFd<'_>) -> io::Result<(usize, usize)> {
    // Larger than the kernel's `struct bpf_map_info` today is fine: the excess stays zero.
    let mut buf = [0u64; 32];
    let mut attr = InfoByFdAttr {
        bpf_fd: map.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&buf) as u32,
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD layout; `info` points at `info_len` writable,
    // 8-byte aligned bytes that outlive the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    let [_type_and_id, sizes, ..] = buf;
    let bytes = sizes.to_ne_bytes();
    let word = |i: usize| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes")) as usize;
    Ok((word(0), word(1)))
}

/// A `BPF_MAP_UPDATE_BATCH` that stopped early. The kernel applies elements in order and stops
/// at the first failure: elements `..done` are written, element `done` failed with `error`, and
/// the rest were not tried.
#[derive(Debug)]
pub(crate) struct BatchError {
    pub done: usize,
    pub error: io::Error,
}

impl BatchError {
    fn before_start(error: io::Error) -> Self {
        BatchError { done: 0, error }
    }
}

/// Deletes every key of `keys` in one `BPF_MAP_DELETE_BATCH`: for a map of maps, one wait for
/// the programs instead of one per key. The kernel deletes in order and stops at the first key it
/// cannot delete (a missing one included), so callers pass keys they know are present.
pub(crate) fn map_delete_batch<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let invalid = |msg: String| BatchError::before_start(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| invalid(format!("batch of {} keys", keys.len())))?;
    let (key_size, _) = map_kv_sizes(map).map_err(BatchError::before_start)?;
    if key_size != std::mem::size_of::<K>() {
        return Err(invalid(format!(
            "the map has {key_size}-byte keys, the batch {}-byte keys",
            std::mem::size_of::<K>()
        )));
    }
    let mut attr =
        BatchAttr { keys: keys.as_ptr() as u64, count, map_fd: map.as_raw_fd() as u32, ..Default::default() };
    // SAFETY: `attr` is the batch layout; `keys` holds `count` readable keys of exactly the map's
    // key size (checked above) that outlive the call; the kernel only reads them.
    let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
    let done = (attr.count as usize).min(keys.len());
    match result {
        Ok(_) if done == keys.len() => Ok(()),
        Ok(_) => Err(BatchError { done, error: io::Error::other(format!("stopped after {done} of {count} keys")) }),
        Err(error) => Err(BatchError { done, error }),
    }
}

/// Writes `values[i]` at `keys[i]` for every `i` in one `BPF_MAP_UPDATE_BATCH` (create or
/// replace, like `BPF_ANY`).
///
/// One syscall instead of one per element, and for a map of maps one wait for the programs
/// running on the CPUs instead of one per element: `bpf_map_do_batch` calls
/// `maybe_wait_bpf_programs` (a `synchronize_rcu`, ~16 ms here) once after the whole batch, where
/// `BPF_MAP_UPDATE_ELEM` calls it after every element. Each element is still replaced on its
/// own, atomically: a program sees an element's old value or its new one.
///
/// `K` and `V` must be exactly the map's key and value sizes (for a map of maps, `V` is `u32`:
/// the inner map's fd); this is checked with the kernel first, because the kernel reads `count`
/// keys and values of *its* sizes from these slices. An empty batch makes no syscall.
pub(crate) fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    let invalid = |msg: String| BatchError::before_start(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if keys.len() != values.len() {
        return Err(invalid(format!("{} keys but {} values", keys.len(), values.len())));
    }
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| invalid(format!("batch of {} elements", keys.len())))?;
    let (key_size, value_size) = map_kv_sizes(map).map_err(BatchError::before_start)?;
    if (key_size, value_size) != (std::mem::size_of::<K>(), std::mem::size_of::<V>()) {
        return Err(invalid(format!(
            "the map has {key_size}-byte keys and {value_size}-byte values, the batch {}-byte keys and {}-byte values",
            std::mem::size_of::<K>(),
            std::mem::size_of::<V>()
        )));
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the batch layout; `keys` and `values` hold `count` readable elements of
    // exactly the map's key and value sizes (checked above) and outlive the call. `aya::Pod`
    // types have no padding and no invalid bit patterns, so the kernel reading them is sound.
    let result = unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
    // On failure too, the kernel has written how many elements it applied to `attr.count`.
    let done = (attr.count as usize).min(keys.len());
    match result {
        Ok(_) if done == keys.len() => Ok(()),
        Ok(_) => Err(BatchError { done, error: io::Error::other(format!("stopped after {done} of {count} elements")) }),
        Err(error) => Err(BatchError { done, error }),
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Reads slots `0..len` of an array map of `V` (u32 keys) in one `BPF_MAP_LOOKUP_BATCH` (reading a
/// Maglev table of 65537 slots one element at a time would take as many syscalls).
pub(crate) fn array_values<V: aya::Pod + Default>(map: BorrowedFd<'_>, len: u32) -> io::Result<Vec<V>> {
    if map_kv_sizes(map)? != (4, std::mem::size_of::<V>()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a map of u32 keys and values of this size"));
    }
    let mut keys = vec![0u32; len as usize];
    let mut values: Vec<V> = (0..len).map(|_| V::default()).collect();
    // The key the kernel stopped at (`out_batch`); unused, as the whole array is read at once.
    let mut next = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: len,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the batch layout; `keys` and `values` have room for `count` elements of
    // the map's key and value sizes (4 bytes and size_of::<V>(), checked above) and `out_batch`
    // for one key, all writable and outliving the call. A null `in_batch` starts at the first key.
    match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => {}
        // ENOENT: the end of the map was reached; `count` says how much was read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    if attr.count != len || keys.iter().enumerate().any(|(i, k)| *k as usize != i) {
        return Err(io::Error::other(format!("read {} of {len} slots, or out of order", attr.count)));
    }
    Ok(values)
}

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`) of this process: a batch of new
/// Maglev tables holds one fd per table until the batch is written.
pub(crate) fn open_files_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `struct rlimit` through the pointer, which is valid and
    // writable for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    fn hash_map(max_entries: u32) -> aya::maps::MapData {
        // BPF_MAP_TYPE_HASH, u32 → u32.
        let obj = aya_obj::Map::new_from_params(1, 4, 4, max_entries, 0);
        aya::maps::MapData::create(obj, "fr_batch_test", None).expect("creating a test map")
    }

    #[test]
    fn a_batch_that_fails_midway_reports_how_many_elements_were_written() {
        if !ferrule_tests::privileged() {
            return;
        }
        let map = hash_map(2);
        // The third element does not fit: the first two are written, then the kernel stops.
        let err = map_update_batch(map.fd().as_fd(), &[1u32, 2, 3], &[10u32, 20, 30]).unwrap_err();
        assert_eq!(err.done, 2, "{err:?}");
        assert_eq!(err.error.raw_os_error(), Some(libc::E2BIG), "{err:?}");
        map_update_batch(map.fd().as_fd(), &[1u32, 2], &[11u32, 21]).expect("replacing both");
    }

    #[test]
    fn a_batch_whose_types_do_not_match_the_map_is_refused_before_the_kernel_reads_it() {
        if !ferrule_tests::privileged() {
            return;
        }
        let map = hash_map(4);
        let err = map_update_batch(map.fd().as_fd(), &[1u64], &[1u32]).unwrap_err();
        assert_eq!((err.done, err.error.kind()), (0, io::ErrorKind::InvalidInput), "{err:?}");
        assert!(err.error.to_string().contains("4-byte keys"), "{err:?}");
    }
}
