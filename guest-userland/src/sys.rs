//! The driver's ioctls. Numbers come from nix's `_IOC` encoding and a test
//! checks them against the ABI crate, which generates the C header.

use xxcapture_abi::{ioctl, Exec, Identity};

nix::ioctl_none!(xxcap_nop, ioctl::TYPE, ioctl::NOP_NR);
nix::ioctl_read!(xxcap_get_info, ioctl::TYPE, ioctl::GET_INFO_NR, Identity);
nix::ioctl_readwrite!(xxcap_exec, ioctl::TYPE, ioctl::EXEC_NR, Exec);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_abi() {
        assert_eq!(
            nix::request_code_none!(ioctl::TYPE, ioctl::NOP_NR) as u32,
            ioctl::NOP
        );
        assert_eq!(
            nix::request_code_read!(
                ioctl::TYPE,
                ioctl::GET_INFO_NR,
                core::mem::size_of::<Identity>()
            ) as u32,
            ioctl::GET_INFO
        );
        assert_eq!(
            nix::request_code_readwrite!(ioctl::TYPE, ioctl::EXEC_NR, core::mem::size_of::<Exec>())
                as u32,
            ioctl::EXEC
        );
    }
}
