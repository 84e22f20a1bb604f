//! A newc ("070701") cpio archive, the format Linux unpacks from an
//! initramfs. Archives concatenated to the initramfs are unpacked after it,
//! over it, so a run's own files need no repacking of the whole image.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes entries into an archive held in memory.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
        self.inode += 1;
        // The name's length counts its terminating NUL.
        let name_size = name.len() + 1;
        let header = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            self.inode, 0, 0, 1, 0, 0, 0, 0, 0, 0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// A directory `name` (relative to the root, no leading `/`).
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, &[])
    }

    /// A regular file `name` holding `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), data)
    }

    /// The host file, folder (recursively) or symlink `src` as `name`,
    /// modes kept, owned by root.
    pub fn add_path(&mut self, src: &Path, name: &str) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        let perm = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(src)?;
            let target = target.to_string_lossy().into_owned();
            return self.entry(name, S_IFLNK | 0o777, target.as_bytes());
        }
        if meta.is_dir() {
            self.entry(name, S_IFDIR | perm, &[])?;
            let mut children: Vec<_> = std::fs::read_dir(src)?
                .collect::<io::Result<Vec<_>>>()?
                .into_iter()
                .map(|e| e.file_name())
                .collect();
            children.sort();
            for child in children {
                let child_name = format!("{name}/{}", child.to_string_lossy());
                self.add_path(&src.join(&child), &child_name)?;
            }
            return Ok(());
        }
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{}: only files, folders and symlinks can be put (mode {:o})",
                src.display(),
                meta.mode()
            )));
        }
        let data = std::fs::read(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        self.file(name, perm, &data)
    }

    /// Ends the archive (the trailer entry) and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let _ = self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }

    /// Ends the archive and appends it to `out`.
    pub fn write_to(self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.finish())
    }
}

/// One hexadecimal field of a newc header.
fn hex_field(header: &[u8], at: usize) -> io::Result<usize> {
    std::str::from_utf8(&header[at..at + 8])
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| io::Error::other("cpio: bad header field"))
}

/// Unpacks an archive of [`Cpio`] (directories, regular files and
/// symlinks; names relative, without `..`) under `dir`, modes kept: what
/// `cpio -i -d` would do there, without needing a cpio program.
pub fn unpack(bytes: &[u8], dir: &Path) -> io::Result<()> {
    let bad = |why: &str| io::Error::other(format!("cpio: {why}"));
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    // Directory modes are set last, deepest first, so that a read-only
    // folder can still receive its entries.
    let mut dirs = Vec::new();
    loop {
        let header = bytes
            .get(at..at + 110)
            .ok_or_else(|| bad("truncated header"))?;
        if !header.starts_with(b"070701") {
            return Err(bad("not a newc archive"));
        }
        let mode = u32::try_from(hex_field(header, 14)?).map_err(|_| bad("mode"))?;
        let size = hex_field(header, 54)?;
        let name_size = hex_field(header, 94)?;
        let name_at = at + 110;
        let name = bytes
            .get(name_at..name_at + name_size.saturating_sub(1))
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| bad("bad name"))?;
        let data_at = align(name_at + name_size);
        let data = bytes
            .get(data_at..data_at + size)
            .ok_or_else(|| bad("truncated data"))?;
        at = align(data_at + size);
        if name == "TRAILER!!!" {
            break;
        }
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(bad(&format!("name {name:?} leaves the folder")));
        }
        let path = dir.join(name);
        let perm = std::fs::Permissions::from_mode(mode & 0o7777);
        match mode & 0o170000 {
            S_IFDIR => {
                std::fs::create_dir_all(&path)?;
                dirs.push((path, perm));
            }
            S_IFREG => {
                std::fs::write(&path, data)?;
                std::fs::set_permissions(&path, perm)?;
            }
            S_IFLNK => {
                let target = std::str::from_utf8(data).map_err(|_| bad("symlink target"))?;
                std::os::unix::fs::symlink(target, &path)?;
            }
            _ => return Err(bad(&format!("{name}: unsupported mode {mode:o}"))),
        }
    }
    for (path, perm) in dirs.into_iter().rev() {
        std::fs::set_permissions(&path, perm)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_and_aligned() {
        let mut cpio = Cpio::default();
        cpio.dir("a").expect("dir");
        cpio.file("a/b", 0o644, b"hello").expect("file");
        let bytes = cpio.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header: mode 0100644, size 5, name size 4.
        let at = text.find("a/b\0").expect("name") - 110;
        let header = &text[at..at + 110];
        assert_eq!(&header[14..22], "000081a4");
        assert_eq!(&header[54..62], "00000005");
        assert_eq!(&header[94..102], "00000004");
    }

    #[test]
    fn unpacks_what_it_packs() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("d/e")).expect("mkdir");
        std::fs::write(src.path().join("d/e/f"), b"data").expect("write");
        std::fs::set_permissions(src.path().join("d/e/f"), PermissionsExt::from_mode(0o751))
            .expect("chmod");
        std::os::unix::fs::symlink("e/f", src.path().join("d/link")).expect("symlink");
        std::fs::set_permissions(src.path().join("d/e"), PermissionsExt::from_mode(0o555))
            .expect("chmod");
        let mut cpio = Cpio::default();
        cpio.dir("x").expect("dir");
        cpio.add_path(&src.path().join("d"), "x/d").expect("add");
        cpio.file("x/cmd", 0o755, b"exec true\n").expect("file");
        let out = tempfile::tempdir().expect("tempdir");
        unpack(&cpio.finish(), out.path()).expect("unpack");
        let x = out.path().join("x");
        assert_eq!(std::fs::read(x.join("d/e/f")).expect("read"), b"data");
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("meta").mode() & 0o7777;
        assert_eq!(mode(&x.join("d/e/f")), 0o751);
        assert_eq!(mode(&x.join("d/e")), 0o555);
        assert_eq!(mode(&x.join("cmd")), 0o755);
        assert_eq!(
            std::fs::read_link(x.join("d/link")).expect("link"),
            Path::new("e/f")
        );
        // Names that would leave the folder are refused.
        let mut evil = Cpio::default();
        evil.file("../escape", 0o644, b"no").expect("file");
        assert!(unpack(&evil.finish(), out.path()).is_err());
        assert!(unpack(b"not an archive", out.path()).is_err());
    }
}
