//! QEMU's guest RAM shared with the harness through a file, for bulk access.
//!
//! QEMU gets `-object memory-backend-file,id=vc-ram,size=<ram>,mem-path=<file>,share=on` and
//! `-machine memory-backend=vc-ram`; the harness maps the same file (through `vm-memory`) and
//! sees every byte the device writes without a qtest round trip. The file lives in `/dev/shm`
//! when that is a writable folder (no disk writes), else in the scratch folder. Used by the
//! canary oracle's fill and sweeps ([`crate::target::Target::bulk_read`]); the qtest `read` /
//! `write` commands stay the path of ordinary driver accesses.

use std::fs::File;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// Identifier of the memory backend object on QEMU's command line.
pub const BACKEND_ID: &str = "vc-ram";

/// A guest RAM file mapped into the harness.
pub struct SharedRam {
    mem: GuestMemoryMmap,
    path: PathBuf,
    /// Keeps the file alive (and removes it on drop).
    _file: tempfile::NamedTempFile,
}

impl SharedRam {
    /// Creates a zero-filled RAM file of `size` bytes (in `/dev/shm` when possible, else in
    /// `scratch`) and maps it. Errors: the file cannot be created, sized or mapped.
    pub fn create(size: u64, scratch: &Path) -> std::io::Result<SharedRam> {
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
            mem,
            path: file.path().to_path_buf(),
            _file: file,
        })
    }

    /// The arguments that make QEMU use this file as its RAM (`-machine` needs
    /// `memory-backend=`[`BACKEND_ID`] as well).
    pub fn object_arg(&self, size: u64) -> String {
        format!(
            "memory-backend-file,id={BACKEND_ID},size={size},mem-path={},share=on",
            self.path.display()
        )
    }

    /// Reads guest RAM at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), String> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| format!("shared guest RAM read at {gpa:#x}: {e}"))
    }

    /// Writes guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), String> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| format!("shared guest RAM write at {gpa:#x}: {e}"))
    }
}
