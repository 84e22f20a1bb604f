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
}
