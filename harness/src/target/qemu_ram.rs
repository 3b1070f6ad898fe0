//! QEMU's guest RAM shared with the harness through a file, for bulk access.
//!
//! QEMU gets `-object memory-backend-file,id=vc-ram,size=<ram>,mem-path=<file>,share=on` and
//! `-machine memory-backend=vc-ram`; the harness maps the same file (through `vm-memory`) and
//! sees every byte the device writes without a qtest round trip. The file lives in `/dev/shm`
//! when that is a writable folder (no disk writes), else in the scratch folder, and has no
//! name there: it is created unlinked (`O_TMPFILE`, or created and removed at once), so no
//! file outlives the harness process, even one ended by SIGKILL. QEMU opens the same file
//! through the harness's descriptor link, `/proc/<harness pid>/fd/<fd>`. Used by the
//! canary oracle's fill and sweeps ([`crate::target::Target::bulk_read`]); the qtest `read` /
//! `write` commands stay the path of ordinary driver accesses.
//!
//! A file whose QEMU is gone goes back to a small pool and serves the next QEMU of the same
//! RAM size, zeroed again: allocating and faulting in a fresh tmpfs file costs about ten times
//! more than zeroing one that is already mapped.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// Identifier of the memory backend object on QEMU's command line.
pub const BACKEND_ID: &str = "vc-ram";

/// Name prefix of the named RAM files earlier versions of the harness left in `/dev/shm`.
pub const LEGACY_PREFIX: &str = "virtio-conform-ram-";

/// Files kept for reuse.
const POOL_SIZE: usize = 2;

/// A mapped RAM file without its owner.
struct Mapped {
    size: u64,
    mem: GuestMemoryMmap,
    /// The unnamed file; it lives as long as this descriptor (and QEMU's).
    file: File,
}

fn pool() -> MutexGuard<'static, Vec<Mapped>> {
    static POOL: OnceLock<Mutex<Vec<Mapped>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A guest RAM file mapped into the harness.
pub struct SharedRam {
    inner: Option<Mapped>,
}

impl Drop for SharedRam {
    fn drop(&mut self) {
        if let Some(m) = self.inner.take() {
            let mut p = pool();
            if p.len() < POOL_SIZE {
                p.push(m);
            }
        }
    }
}

impl SharedRam {
    /// A zero-filled RAM file of `size` bytes (in `/dev/shm` when possible, else in
    /// `scratch`), mapped; reused from the pool when one of that size is free (the caller
    /// must make sure the QEMU that used it has exited). Errors: the file cannot be created,
    /// sized, mapped or zeroed.
    pub fn create(size: u64, scratch: &Path) -> std::io::Result<SharedRam> {
        let reused = {
            let mut p = pool();
            p.iter()
                .position(|m| m.size == size)
                .map(|i| p.swap_remove(i))
        };
        if let Some(m) = reused {
            let ram = SharedRam { inner: Some(m) };
            ram.zero().map_err(std::io::Error::other)?;
            return Ok(ram);
        }
        Self::create_new(size, scratch)
    }

    fn create_new(size: u64, scratch: &Path) -> std::io::Result<SharedRam> {
        let shm = Path::new("/dev/shm");
        static SWEPT: Once = Once::new();
        SWEPT.call_once(|| {
            remove_orphaned_in(shm);
        });
        let file = match shm.is_dir() {
            true => tempfile::tempfile_in(shm).or_else(|_| tempfile::tempfile_in(scratch))?,
            false => tempfile::tempfile_in(scratch)?,
        };
        file.set_len(size)?;
        let dup: File = file.try_clone()?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(dup, 0)),
        )])
        .map_err(|e| std::io::Error::other(format!("mapping the guest RAM file: {e}")))?;
        Ok(SharedRam {
            inner: Some(Mapped { size, mem, file }),
        })
    }

    fn mapped(&self) -> Result<&Mapped, String> {
        self.inner
            .as_ref()
            .ok_or_else(|| "shared guest RAM released".to_string())
    }

    /// The path through which another process of this machine opens the (unnamed) file:
    /// `/proc/<harness pid>/fd/<fd>`, valid while this value lives.
    pub fn path(&self) -> Option<PathBuf> {
        let m = self.inner.as_ref()?;
        Some(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            m.file.as_raw_fd()
        )))
    }

    /// The arguments that make QEMU use this file as its RAM (`-machine` needs
    /// `memory-backend=`[`BACKEND_ID`] as well).
    pub fn object_arg(&self, size: u64) -> String {
        format!(
            "memory-backend-file,id={BACKEND_ID},size={size},mem-path={},share=on",
            self.path()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }

    /// Reads guest RAM at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), String> {
        self.mapped()?
            .mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| format!("shared guest RAM read at {gpa:#x}: {e}"))
    }

    /// Writes zeros over all of guest RAM. Errors: the RAM was released or cannot be written.
    pub fn zero(&self) -> Result<(), String> {
        let size = self.mapped()?.size;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(zeros.len() as u64) as usize;
            self.write(at, &zeros[..n])
                .map_err(|e| format!("zeroing guest RAM: {e}"))?;
            at += n as u64;
        }
        Ok(())
    }

    /// The guest physical address of the first nonzero byte of guest RAM, or `None` when all
    /// of it is zero. Errors: the RAM was released or cannot be read.
    pub fn first_nonzero(&self) -> Result<Option<u64>, String> {
        let m = self.mapped()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < m.size {
            let n = (m.size - at).min(buf.len() as u64) as usize;
            self.read(at, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
        Ok(None)
    }

    /// Writes guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), String> {
        self.mapped()?
            .mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| format!("shared guest RAM write at {gpa:#x}: {e}"))
    }
}

/// Removes the named RAM files (`virtio-conform-ram-*`) in `dir` that no process holds open:
/// earlier versions of the harness named their file and left it behind when they were killed
/// (or kept it in a pool until exit). A file some process still has open (a run of such a
/// version in progress, or its QEMU) stays. Runs once per process from [`SharedRam::create`]
/// for `/dev/shm`; returns how many files it removed.
pub fn remove_orphaned_in(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let candidates: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(LEGACY_PREFIX))
        })
        .map(|e| e.path())
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    let open = open_paths();
    candidates
        .iter()
        .filter(|p| !open.contains(*p) && std::fs::remove_file(p).is_ok())
        .count()
}

/// Every path some process of this machine holds open (the targets of `/proc/*/fd/*`).
fn open_paths() -> HashSet<PathBuf> {
    let mut open = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return open;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                open.insert(target);
            }
        }
    }
    open
}
