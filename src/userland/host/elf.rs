//! Reads the parts of an ELF object the glibc loader consults (identity, `PT_INTERP`,
//! `DT_NEEDED`/`DT_RPATH`/`DT_RUNPATH`/`DT_SONAME`) with bounded positioned reads, so
//! multi-hundred-MB CUDA libraries are never read whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use goblin::container::Ctx;
use goblin::elf::dynamic::{DF_1_NODEFLIB, DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME};
use goblin::elf::header::{EM_386, EM_AARCH64, EM_X86_64};
use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP};
use goblin::elf::{Dynamic, Elf, ProgramHeader};

use super::UserlandError;
use super::root::io_err;

/// Upper bound for any single ELF structure we read, so a corrupt header cannot make
/// us allocate gigabytes.
const MAX_READ: u64 = 256 << 20;

/// ELF identity the loader requires every object of a process to share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Abi {
    pub(super) is_64: bool,
    pub(super) little_endian: bool,
    pub(super) machine: u16,
}

impl Abi {
    pub(super) fn triplet(self) -> Option<&'static str> {
        match (self.machine, self.is_64) {
            (EM_X86_64, true) => Some("x86_64-linux-gnu"),
            (EM_AARCH64, true) => Some("aarch64-linux-gnu"),
            (EM_386, false) => Some("i386-linux-gnu"),
            _ => None,
        }
    }

    pub(super) fn platform(self) -> &'static str {
        match self.machine {
            EM_X86_64 => "x86_64",
            EM_AARCH64 => "aarch64",
            EM_386 => "i686",
            _ => "",
        }
    }
}

/// The parts of an ELF object the loader consults.
#[derive(Debug, Clone, Default)]
pub(super) struct ElfObject {
    pub(super) abi: Abi,
    pub(super) interp: Option<String>,
    pub(super) needed: Vec<String>,
    pub(super) rpath: Option<String>,
    pub(super) runpath: Option<String>,
    pub(super) soname: Option<String>,
    pub(super) nodeflib: bool,
}

/// Reads only headers, `PT_INTERP`, `PT_DYNAMIC` and the dynamic string table with
/// positioned reads; `Ok(None)` means "not ELF at all" (e.g. a linker script).
pub(super) fn read_elf(host: &Path, path: &str) -> Result<Option<ElfObject>, UserlandError> {
    let malformed = |reason: String| UserlandError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(host).map_err(io_err(host))?;
    let len = file.metadata().map_err(io_err(host))?.len();
    let read = |offset: u64, size: u64| -> Result<Vec<u8>, UserlandError> {
        if size > MAX_READ || offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(malformed(format!(
                "{size} bytes at offset {offset} exceed the file"
            )));
        }
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, offset).map_err(io_err(host))?;
        Ok(buf)
    };
    let head = read(0, len.min(64))?;
    if !head.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let goblin_err = |e: goblin::error::Error| malformed(e.to_string());
    let header = Elf::parse_header(&head).map_err(goblin_err)?;
    let ctx = Ctx::new(
        header.container().map_err(goblin_err)?,
        header.endianness().map_err(goblin_err)?,
    );
    let phdr_len = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
    let phdr_bytes = read(header.e_phoff, phdr_len)?;
    let mut phdrs = ProgramHeader::parse(&phdr_bytes, 0, usize::from(header.e_phnum), ctx)
        .map_err(goblin_err)?;
    let mut obj = ElfObject {
        abi: Abi {
            is_64: ctx.is_big(),
            little_endian: ctx.is_little_endian(),
            machine: header.e_machine,
        },
        ..ElfObject::default()
    };
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let raw = read(p.p_offset, p.p_filesz)?;
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8(name.to_vec()).map_err(|e| malformed(e.to_string()))?;
        obj.interp = Some(name);
    }
    let Some(dyn_idx) = phdrs.iter().position(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(Some(obj));
    };
    let dyn_bytes = read(phdrs[dyn_idx].p_offset, phdrs[dyn_idx].p_filesz)?;
    // `Dynamic::parse` slices its input at the segment's file offset; it only gets the
    // segment, so rebase it (PT_LOAD entries, used for address translation, stay put).
    phdrs[dyn_idx].p_offset = 0;
    let Some(dynamic) = Dynamic::parse(&dyn_bytes, &phdrs, ctx).map_err(goblin_err)? else {
        return Ok(Some(obj));
    };
    if dynamic.info.strtab == 0 && dynamic.info.strsz != 0 {
        return Err(malformed(
            "DT_STRTAB lies outside every PT_LOAD segment".to_owned(),
        ));
    }
    let strtab_bytes = read(dynamic.info.strtab as u64, dynamic.info.strsz as u64)?;
    // Only the handful of strings we use are decoded, so odd bytes in symbol names
    // elsewhere in `.dynstr` cannot fail the parse.
    let string = |offset: u64| {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| strtab_bytes.get(o..));
        let bytes = bytes.and_then(|b| b.split(|&c| c == 0).next());
        let bytes = bytes
            .ok_or_else(|| malformed(format!("dynamic string offset {offset} out of range")))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| malformed(format!("dynamic string at {offset}: {e}")))
    };
    for d in &dynamic.dyns {
        match d.d_tag {
            DT_NEEDED => obj.needed.push(string(d.d_val)?),
            DT_RPATH => obj.rpath = Some(string(d.d_val)?),
            DT_RUNPATH => obj.runpath = Some(string(d.d_val)?),
            DT_SONAME => obj.soname = Some(string(d.d_val)?),
            _ => {}
        }
    }
    obj.nodeflib = dynamic.info.flags_1 & DF_1_NODEFLIB != 0;
    Ok(Some(obj))
}
