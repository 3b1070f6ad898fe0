//! QEMU's guest RAM shared with the harness through a file, for bulk access.
//!
//! QEMU gets `-object memory-backend-file,id=vc-ram,size=<ram>,mem-path=<file>,share=on` and
//! `-machine memory-backend=vc-ram`; the harness maps the same file (through `vm-memory`) and
//! sees every byte the device writes without a qtest round trip. The file lives in `/dev/shm`
//! when that is a writable folder (no disk writes), else in the scratch folder. Used by the
//! canary oracle's fill and sweeps ([`crate::target::Target::bulk_read`]); the qtest `read` /
//! `write` commands stay the path of ordinary driver accesses.
//!
//! A file whose QEMU is gone goes back to a small pool and serves the next QEMU of the same
//! RAM size, zeroed again: allocating and faulting in a fresh tmpfs file costs about ten times
//! more than zeroing one that is already mapped.

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// Identifier of the memory backend object on QEMU's command line.
pub const BACKEND_ID: &str = "vc-ram";

/// Files kept for reuse.
const POOL_SIZE: usize = 2;

/// A mapped RAM file without its owner.
struct Mapped {
    size: u64,
    mem: GuestMemoryMmap,
    /// Keeps the file alive (and removes it on drop).
    file: tempfile::NamedTempFile,
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
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                m.mem
                    .write_slice(&zeros[..n], GuestAddress(at))
                    .map_err(|e| std::io::Error::other(format!("zeroing guest RAM: {e}")))?;
                at += n as u64;
            }
            return Ok(SharedRam { inner: Some(m) });
        }
        Self::create_new(size, scratch)
    }

    fn create_new(size: u64, scratch: &Path) -> std::io::Result<SharedRam> {
        let shm = Path::new("/dev/shm");
        let builder = || {
            let mut b = tempfile::Builder::new();
            b.prefix("virtio-conform-ram-");
            b
        };
        let file = match shm.is_dir() {
            true => builder()
                .tempfile_in(shm)
                .or_else(|_| builder().tempfile_in(scratch))?,
            false => builder().tempfile_in(scratch)?,
        };
        file.as_file().set_len(size)?;
        let dup: File = file.as_file().try_clone()?;
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

    /// The arguments that make QEMU use this file as its RAM (`-machine` needs
    /// `memory-backend=`[`BACKEND_ID`] as well).
    pub fn object_arg(&self, size: u64) -> String {
        format!(
            "memory-backend-file,id={BACKEND_ID},size={size},mem-path={},share=on",
            self.inner
                .as_ref()
                .map(|m| m.file.path().display().to_string())
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

    /// Writes guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), String> {
        self.mapped()?
            .mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| format!("shared guest RAM write at {gpa:#x}: {e}"))
    }
}
